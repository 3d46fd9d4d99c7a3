# SimpleStories-5M explaining block 5 on SimpleStories: the original's base configuration
# (short explanations, the model's own tokenizer), frozen LM.
# python data/simplestories/prepare.py
# torchrun --standalone --nproc_per_node=8 dump.py config/simplestories_frozen.py
# torchrun --standalone --nproc_per_node=8 train.py config/simplestories_frozen.py

model = 'SimpleStories/SimpleStories-5M'
data_dir = 'data/simplestories'
out_dir = 'out/simplestories_L5'
layer = 5
ctx = 64
min_pos = 5  # the original's SimpleStories setting
num_train_samples = 2_000_000
num_val_samples = 20_000
device = 'cuda'
compile = True
dump_batch_size = 2048

t_text = 5
decoder_prompt = 'short explanation of <embed>:'
encoder_prompt = 'Summary of the text: <text>'
encoder_init = 'zero'  # the lens of config/austen_next_words.py, frozen
warm_start_target = 'next'
w_current_token = 0.0
warm_start_iters = 100
unfreeze_at = -1
lora_rank = 0
batch_size = 1024
max_iters = 4_000  # 2 epochs
learning_rate = 1e-3
warmup_iters = 10
alpha_warmup_iters = 200
tau_hold_iters = 500
tau_decay_iters = 3_500
eval_interval = 250
periodic_eval_samples = 500
eval_samples = 2_000  # eval.py's held-out measurement
log_interval = 10
ckpt_interval = 500
