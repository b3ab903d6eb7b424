"""The prompt sets shipped with sparring (package data: ifeval_*.jsonl, the IFEval-style sets; chat_*.jsonl,
the open-ended chat sets; docs/data.md). The scripts that build them are not installed: they are
tools/data/build_ifeval.py and tools/data/build_chat.py in the source tree. Reading any prompt source:
sparring.prompts."""
