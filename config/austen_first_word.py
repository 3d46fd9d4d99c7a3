# The earlier default (config/austen_next_words.py, train.py's own lens settings) with words that start with
# the token at p: the warm start writes and reads the real tokens p..p+7, the decoder is asked for the token
# at p as its first word for the whole run, the encoder also reads that word's hidden state, where the LM
# holds it as its current token (what later positions read from p), and a reconstruction term keeps Â near
# A. At 150 iterations (docs/experiments.md, issue 17, seeds 1337 / 7) it is the best lens measured: KL at p
# 0.83 / 0.97, 0.40x / 0.47x mean ablation after p, FVE +0.26 / +0.21, against that default's 2.12, 0.93x,
# -1.29; but the real token at p alone, read by the same encoder, does better (0.66 / 0.77 at p) and the
# words after the first add nothing (docs/words_probe.py), so it is an arm. Its 1,000
# iterations (that default's length) have not been run yet.
# python dump.py config/austen_smollm2.py && python train.py config/austen_first_word.py && python eval.py config/austen_first_word.py
encoder_reads = 'first_and_last'
warm_start_target = 'current'
w_current_token = 1.0
w_mse = 4.0
run_name = 'first_word'
