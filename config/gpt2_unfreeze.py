# gpt2_frozen.py, then from iteration 5,000 (about one epoch) the decoder and encoder train their own
# copies of GPT-2 at a tenth of the lens's learning rate. Same shards as gpt2_frozen.py.
exec(open('config/gpt2_frozen.py').read())
unfreeze_at = 5_000
lm_lr_mult = 0.1
weight_decay = 0.01  # on the LM copies only
