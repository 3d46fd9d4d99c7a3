# The embedded default with words that end at p: the decoder writes 4 words meant as the real tokens p-3..p
# (the warm start teaches them, decaying over 1,000 iterations, so still at half weight at the end), the
# encoder reads the hidden state at the last word, where the LM holds the token at p in that context, through
# a map starting as the identity, and both sides train their own copies of the LM from the start (the frozen
# decoder never learned to write the tokens before p). At 500 iterations (docs/experiments.md, issue 17) it is
# the first lens whose words carry more than the token at p: where its last word is that token (82% of the
# samples) the lens gives 0.48 / 0.45 at p (seeds 1337 / 7) against the token alone's 0.60 / 0.59, and its other
# words with the real token at p give 0.52 / 0.54 on all samples against 0.64 / 0.66; but its mean (0.85 / 0.84)
# still loses to the token at p alone, all of it on the samples where its last word is another. ~4.4 s per iteration on a 2-core Intel Xeon (model 167, bf16).
# python dump.py config/austen_smollm2.py && python train.py config/austen_previous_words.py && python eval.py config/austen_previous_words.py
t_text = 4
encoder_init = 'identity'
encoder_prompt = '<|endoftext|>Summary of the text:<text>'
warm_start_target = 'previous'
warm_start_iters = 1000
unfreeze_at = 0
max_iters = 500
run_name = 'previous_words'
