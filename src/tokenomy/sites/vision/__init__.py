"""The visual-token sites: before the language model (`prellm`, `vit_merge`) and between its layers (`in_llm`),
all applied by one `session`."""
