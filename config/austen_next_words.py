# The embedded default until 2026-12-03, and train.py's own lens settings: a frozen decoder writes 8 words,
# warm-started for 100 iterations on the real tokens after p, read back by an encoder that starts at the
# mean activation, 1,000 iterations of 8 (~20 min on a 2-core Intel with AMX). Its words beat a shuffled
# explanation and the real text around p, but carry only what the model is about to say: the LM's own top
# next tokens, read by the same encoder, do as well, and after p it helps no more than the mean (README
# Results, issue 17). Here as the baseline setting the earlier results were measured with.
# python dump.py config/austen_smollm2.py && python train.py config/austen_next_words.py && python eval.py config/austen_next_words.py
run_name = 'next_words'
