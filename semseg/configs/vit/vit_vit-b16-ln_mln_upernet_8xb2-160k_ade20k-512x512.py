# As vit_vit-b16_mln_upernet_8xb2-160k_ade20k-512x512, with stochastic depth 0.1 and a final LayerNorm.
_base_ = './vit_vit-b16_mln_upernet_8xb2-160k_ade20k-512x512.py'

model = dict(backbone=dict(drop_path_rate=0.1, final_norm=True))
