# config/austen_next_words.py with words that start with the token at p: the warm start writes and reads
# the real tokens p..p+7, the decoder is asked for the token at p as its first word for the whole run, the
# encoder also reads that word's hidden state, where the LM holds it as its current token (what later
# positions read from p), and a reconstruction term keeps Â near A. An arm of issue 17 (docs/experiments.md).
# python dump.py config/austen_smollm2.py && python train.py config/austen_first_word.py && python eval.py config/austen_first_word.py
exec(open('config/austen_next_words.py').read())
encoder_reads = 'first_and_last'
warm_start_target = 'current'
w_current_token = 1.0
w_mse = 4.0
run_name = 'first_word'
