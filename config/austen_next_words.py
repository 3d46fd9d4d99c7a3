# The embedded default until 2026-12-03: a frozen decoder writes 8 words, warm-started for 100 iterations on
# the real tokens after p, read back by an encoder that starts at the mean activation (the prompt repeated
# after the words, so the last position re-reads them from their start), 1,000 iterations of 8. Its words
# carry only what the model is about to say: the LM's own top next tokens, read by the same encoder, do as
# well (docs/experiments.md, issue 17). Here as the setting the earlier results were measured with.
# python dump.py config/austen_smollm2.py && python train.py config/austen_next_words.py && python eval.py config/austen_next_words.py
t_text = 8
encoder_prompt = '<|endoftext|>Summary of the text:<text>\nSummary of the text:'
encoder_init = 'zero'
warm_start_target = 'next'
w_current_token = 0.0
warm_start_iters = 100
unfreeze_at = -1
lora_rank = 0
lm_lr_mult = 0.1
max_iters = 1000
run_name = 'next_words'
