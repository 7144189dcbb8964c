"""Dataset preparation for GPT-2 training with Fairseq (`gpt2-hpu-prepare`).

Nothing here imports torch or fairseq: the prepare command must start fast and
work on machines that only have numpy and tiktoken.
"""
