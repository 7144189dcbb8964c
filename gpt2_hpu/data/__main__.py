"""`python -m gpt2_hpu.data ...` is the same as `gpt2-hpu-prepare ...`."""
from gpt2_hpu.data.prepare import main

if __name__ == "__main__":
    main()
