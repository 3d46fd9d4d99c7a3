# The embedded default, longer: 24,000 train windows (one epoch, no window seen twice) in 1,500
# iterations of 16, about 70 min on 2 CPU cores. Its learning curve (docs/experiments.md, README) shows
# where the default's 30-minute run would go with more samples.
# python dump.py config/austen_smollm2_long.py && python train.py config/austen_smollm2_long.py && python eval.py config/austen_smollm2_long.py
out_dir = 'out/austen_long'
num_train_samples = 24000
max_iters = 1500
batch_size = 16
tau_decay_iters = 1400
eval_interval = 150
ckpt_interval = 150
