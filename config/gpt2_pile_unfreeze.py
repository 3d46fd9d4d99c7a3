# gpt2_unfreeze.py on the Pile.
exec(open('config/gpt2_unfreeze.py').read())
data_dir = 'data/pile'
out_dir = 'out/gpt2_pile_L6'
