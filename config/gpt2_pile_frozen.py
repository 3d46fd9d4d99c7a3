# gpt2_frozen.py on the Pile (10M train / 100k val documents, data/pile/prepare.py).
exec(open('config/gpt2_frozen.py').read())
data_dir = 'data/pile'
out_dir = 'out/gpt2_pile_L6'
