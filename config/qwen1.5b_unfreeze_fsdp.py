# Qwen2.5-1.5B (1.54B parameters, 28 blocks, d 1536, tied embeddings) explaining block 14 on OpenWebText,
# the decoder and encoder training their own copies of the LM from iteration 2,000, sharded with FSDP2.
# Not run here (no GPU, no hub); the memory below is computed, not measured (README, Scale and memory).
# python data/openwebtext/prepare.py --tokenizer=Qwen/Qwen2.5-1.5B   # -> data/openwebtext/Qwen2.5-1.5B
# torchrun --standalone --nproc_per_node=8 dump.py  config/qwen1.5b_unfreeze_fsdp.py
# torchrun --standalone --nproc_per_node=8 train.py config/qwen1.5b_unfreeze_fsdp.py
# python eval.py config/qwen1.5b_unfreeze_fsdp.py
# Expected per GPU on 8 GPUs: frozen LM in bf16 3.1 GB + the KL's fp32 head 0.9 GB + the copies' fp32
# weights, gradients and AdamW state (1.54B + 0.93B parameters x 16 bytes) / 8 = 4.9 GB, so ~9 GB before
# activations, ~12 GB with 32 samples per GPU. With DDP instead (fsdp=False) the copies alone are 39.5 GB per GPU.

model = 'Qwen/Qwen2.5-1.5B'
data_dir = 'data/openwebtext/Qwen2.5-1.5B'
out_dir = 'out/qwen1.5b_owt_L14'
layer = 14
ctx = 128
min_pos = 8
num_train_samples = 2_000_000  # 2M x 1536 x 2 bytes = 6 GB of shards
num_val_samples = 20_000
acts_dtype = 'bfloat16'  # Qwen's residual stream has outliers beyond float16's 65,504
device = 'cuda'
dtype = 'bfloat16'
compile = True
dump_batch_size = 256

# the lens of config/austen_next_words.py (whole LM copies, which fsdp shards), unfrozen from unfreeze_at on; the
# embedded default's lens (words ending at p, low-rank copies trained from the start) is not yet measured at this scale
exec(open('config/austen_next_words.py').read())
run_name = ''  # named by train.py, not 'next_words'
t_text = 10
batch_size = 256  # samples per optimizer step: 32 per GPU on 8 GPUs
max_iters = 7_812  # one epoch
learning_rate = 1e-3
warmup_iters = 10
alpha_warmup_iters = 312
tau_hold_iters = 625
tau_decay_iters = 7_187
unfreeze_at = 2_000
fsdp = True  # each copied block its own FSDP group: bf16 compute, fp32 master weights and gradient reduction
lm_lr_mult = 0.1
weight_decay = 0.01  # on the LM copies only
eval_interval = 500
periodic_eval_samples = 512  # a multiple of the 8 ranks
eval_samples = 2_000
log_interval = 10
ckpt_interval = 500
