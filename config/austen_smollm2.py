# The embedded default: SmolLM2-135M-Instruct (Llama architecture, 30 blocks, d 576) explaining the
# output of its block 15 on Jane Austen's novels, on a CPU. train.py's, dump.py's and eval.py's own
# settings are this run, so this file changes nothing: it names the run, as the other configs name theirs.
# python data/austen/prepare.py && python dump.py config/austen_smollm2.py && python train.py config/austen_smollm2.py && python eval.py config/austen_smollm2.py
