# Llama-3.1-8B (8.0B parameters, 32 blocks, d 4096; a gated hub model: accept its licence and
# `huggingface-cli login` first) explaining block 16 on OpenWebText, frozen LM.
# Not run here (no GPU, no hub); the memory below is computed, not measured (README, Scale and memory).
# python data/openwebtext/prepare.py --tokenizer=meta-llama/Llama-3.1-8B   # -> data/openwebtext/Llama-3.1-8B
# torchrun --standalone --nproc_per_node=8 dump.py  config/llama8b_frozen.py
# torchrun --standalone --nproc_per_node=8 train.py config/llama8b_frozen.py
# python eval.py config/llama8b_frozen.py
# Expected per GPU on 8 GPUs: frozen LM in bf16 16.1 GB + the KL's fp32 head 2.1 GB + the lens (three
# 4096 x 4096 maps and prompts, fp32 with gradients and AdamW state) 0.8 GB, so ~19 GB before
# activations, ~25-30 GB with 32 samples per GPU: DDP, no sharding needed. Unfreezing it would need fsdp=True
# (8.0B + 4.4B parameters of copies x 16 bytes / 8 = 25 GB per GPU more).

model = 'meta-llama/Llama-3.1-8B'
data_dir = 'data/openwebtext/Llama-3.1-8B'
out_dir = 'out/llama8b_owt_L16'
layer = 16
ctx = 128
min_pos = 8
num_train_samples = 2_000_000  # 2M x 4096 x 2 bytes = 16 GB of shards
num_val_samples = 20_000
acts_dtype = 'bfloat16'  # float16 would stop the dump at a residual beyond 65,504
device = 'cuda'
dtype = 'bfloat16'
compile = True
dump_batch_size = 128

# the lens of config/austen_next_words.py, frozen; the embedded default's lens (words ending at p, low-rank
# copies trained from the start) is not yet measured at this scale
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
eval_interval = 500
periodic_eval_samples = 512  # a multiple of the 8 ranks
eval_samples = 2_000
log_interval = 10
ckpt_interval = 500
