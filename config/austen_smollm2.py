# The embedded default: SmolLM2-135M-Instruct (Llama architecture, 30 blocks, d 576) explaining the
# output of its block 15 on Jane Austen's novels, on a CPU. Made by data/austen/prepare.py; dump.py's
# defaults are its dump (8,000 train / 500 val windows of 64 tokens), eval.py's its 200 held-out samples.
# The lens writes 4 words meant as the real tokens p-3..p (the warm start teaches them, decaying over
# 1,000 iterations, so still at half weight at the end), the encoder reads the hidden state at the last
# word, where the LM holds the token at p in that context, through a map starting as the identity, and
# both sides train rank-16 updates of the LM's linear maps from the start (the frozen decoder never
# learned to write the tokens before p; whole fp32 copies learn it too, at 1.4x the time and 6x the
# memory). train.py's own lens settings are the earlier default (config/austen_next_words.py), whose
# words carried no more than the model's next token (README Results, docs/experiments.md, issue 17).
# The tau schedule is train.py's (decayed over 900 iterations, so 0.6 at the end): it is what was measured.
# 500 iterations: 27 min (3.1 s per iteration) on a 2-core Intel Xeon (model 167, bf16).
# python dump.py config/austen_smollm2.py && python train.py config/austen_smollm2.py && python eval.py config/austen_smollm2.py
t_text = 4
encoder_init = 'identity'
encoder_prompt = '<|endoftext|>Summary of the text:<text>'
warm_start_target = 'previous'
warm_start_iters = 1000
unfreeze_at = 0
lora_rank = 16
lm_lr_mult = 1.0  # the updates train at the lens's own learning rate (LoRA's usual 10x a whole copy's; lower is untried)
max_iters = 500
