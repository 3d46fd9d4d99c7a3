# simplestories_frozen.py, unfreezing the decoder's and encoder's LM copies after the first epoch.
exec(open('config/simplestories_frozen.py').read())
unfreeze_at = 2_000
lm_lr_mult = 0.1
