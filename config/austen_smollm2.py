# The embedded default: SmolLM2-135M-Instruct (Llama architecture, 30 blocks, d 576) explaining the
# output of its block 15 on Jane Austen's novels, on a CPU. Made by data/austen/prepare.py.
# The scripts' defaults ARE this setting (dump.py: 8,000 train / 500 val windows of 64 tokens;
# train.py: 1,000 iterations of 8; eval.py: 200 held-out samples), so this file sets nothing: it is
# here so that every command names its config, and as the place to start a fork of the default.
# python dump.py config/austen_smollm2.py && python train.py config/austen_smollm2.py && python eval.py config/austen_smollm2.py
