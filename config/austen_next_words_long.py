# The earlier default (config/austen_next_words.py), twice as long: 2,000 iterations of 8 (two epochs of the
# dump's 8,000 windows), the temperature decayed over the longer run. Its learning
# curve (docs/experiments.md) shows where that setting's 20-minute run would go with more steps.
# python dump.py config/austen_smollm2.py && python train.py config/austen_next_words_long.py && python eval.py config/austen_next_words_long.py
exec(open('config/austen_next_words.py').read())
run_name = 'next_words_long'
max_iters = 2000
tau_decay_iters = 1900
eval_interval = 200
ckpt_interval = 200
