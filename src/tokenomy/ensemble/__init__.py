"""Ensembles of causal LMs with different tokenizers: exact byte-level alignment (Phan et al. 2024) or a
union-vocabulary baseline; average / weighted / max-confidence strategies; CoRE consistency on top.

    from tokenomy.ensemble import Ensemble
    ens = Ensemble(["gemma3-270m", "smollm2-135m"], alignment="bytes", core=True)
    print(ens.generate("The capital of France is", max_new_bytes=24)[0].text)
"""

from tokenomy.ensemble.align import ALIGNMENTS
from tokenomy.ensemble.bytelevel import ByteLevelLM
from tokenomy.ensemble.combine import STRATEGIES, Combiner, Core, Strategy
from tokenomy.ensemble.generate import Ensemble, Output, decode, generate, single

__all__ = ["ALIGNMENTS", "STRATEGIES", "ByteLevelLM", "Combiner", "Core", "Ensemble", "Output", "Strategy",
           "decode", "generate", "single"]
