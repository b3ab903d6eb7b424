"""The prompt sets shipped with sparring and the scripts that build them (build.py: the IFEval-style
sets; build_chat.py: the open-ended chat set). Reading any prompt source: sparring.prompts."""
