# GPT-2 small (124M, 12 blocks, d 768) explaining block 6 on OpenWebText: the original's headline run,
# with its settings (t_text 10, lr 1e-3, tau 1.0 held then to 0.1, alpha warm-up), frozen LM. The prompts
# and the warm start are this project's earlier default's (config/austen_next_words.py); the original's
# were '<|endoftext|>Short explanation of <embed>. Language, topic, sentiment, claims, speaker, style, etc:'
# and '<|endoftext|>Summary of the text, encapsulating the main points and message, style and details: <text>'.
# python data/openwebtext/prepare.py
# torchrun --standalone --nproc_per_node=8 dump.py config/gpt2_frozen.py
# torchrun --standalone --nproc_per_node=8 train.py config/gpt2_frozen.py
# python eval.py config/gpt2_frozen.py

model = 'openai-community/gpt2'
data_dir = 'data/openwebtext'
out_dir = 'out/gpt2_owt_L6'
layer = 6
ctx = 128
min_pos = 8
num_train_samples = 5_000_000  # ~9 GB of shards; 2 epochs at batch 1024 = 9,766 iterations
num_val_samples = 50_000
device = 'cuda'
compile = True
dump_batch_size = 512

# the lens of config/austen_next_words.py, frozen; the embedded default's lens (words ending at p, low-rank
# copies trained from the start) is not yet measured at this scale
exec(open('config/austen_next_words.py').read())
run_name = ''  # named by train.py, not 'next_words'
t_text = 10
batch_size = 1024  # per optimizer step: 128 per GPU on 8 GPUs; on fewer GPUs raise gradient_accumulation_steps
gradient_accumulation_steps = 1
max_iters = 9_766  # 2 epochs
learning_rate = 1e-3
lr_schedule = 'cosine'
warmup_iters = 10
min_lr = 1e-5
alpha_warmup_iters = 312  # the original's linear alpha warm-up, in optimizer steps
tau_start = 1.0
tau_end = 0.1
tau_hold_iters = 625  # the original holds tau for 625 optimizer steps, then decays linearly
tau_decay_iters = 9_141  # reaches tau_end at the last iteration
w_entropy = 0.0
eval_interval = 500
periodic_eval_samples = 500
eval_samples = 2_000  # eval.py's held-out measurement
log_interval = 10
ckpt_interval = 1_000
wandb_log = False  # True logs scalars and a samples table; wandb_mode='offline' needs no network
