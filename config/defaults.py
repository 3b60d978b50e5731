"""Every configuration key of the project, with its default, its meaning and what a change of it does.

Each key is declared once, here or (``MODEL.<METHOD>.*``) by the method that owns it, with one role of
``utils/keyfacts.py`` (FREE, TRAIN, EVAL, MODEL, SHAPE, DATA, DATA_SHAPE) and, where it has them, its allowed
choices, range and whether it is a path: the run-folder checks (--resume), the result names of test.py,
the config checks and weight loading all read these facts. YAML files under ``configs/`` override the
defaults and ``KEY VALUE`` pairs on the command line override both. ``config.get_cfg()`` (config/setup.py)
returns a fresh, mutable configuration holding every key.
"""
from data.datasets.registry import DEFAULT_DATASET
from utils.keyfacts import DATA, DATA_SHAPE, EVAL, FREE, MODEL, SHAPE, TRAIN, KeyTable

KEYS = KeyTable()
key = KEYS.add

# ---------------------------------------------------------------------------------------------------
# MODEL
# ---------------------------------------------------------------------------------------------------
# 'auto' picks CUDA when available, else the CPU, but train.py stops instead of training a full-size
# backbone (anything but 'vit_custom') on the CPU; 'cpu' / 'cuda' / 'cuda:N' force a device.
key("MODEL.DEVICE", "auto", FREE)
# The method (modeling/methods): 'Signal' (SIM + GAM + LAM), 'Baseline' (the shared encoder and its class-token
# heads only); a new method is one folder there (docs/extending.md).
key("MODEL.METHOD", "Signal", SHAPE)
# Name used for checkpoint file names.
key("MODEL.NAME", "Signal", TRAIN)
# Backbone shared by the three modalities:
#   'ViT-B-16'              CLIP ViT-B/16 visual tower (768 wide, QuickGELU, 512-d projected tokens)
#   'vit_base_patch16_224'  ImageNet ViT-B/16 (768-d tokens, no projection)
#   'vit_custom'            a small CLIP-style ViT sized by MODEL.CUSTOM_VIT (demo and tests)
key("MODEL.TRANSFORMER_TYPE", "ViT-B-16", SHAPE)
# Local file with pretrained backbone weights: an OpenAI CLIP checkpoint (TorchScript archive or state
# dict) for 'ViT-B-16', a timm state dict for 'vit_base_patch16_224'. Empty: random initialisation.
key("MODEL.PRETRAIN_PATH", "", TRAIN(path=True))
# Stochastic depth / dropout / attention dropout inside the backbone.
key("MODEL.DROP_PATH", 0.0, TRAIN(low=0.0, high=1.0, what='a probability in [0, 1]'))
key("MODEL.DROP_OUT", 0.0, TRAIN(low=0.0, high=1.0, what='a probability in [0, 1]'))
key("MODEL.ATT_DROP_RATE", 0.0, TRAIN(low=0.0, high=1.0, what='a probability in [0, 1]'))
# Size of the small backbone used when TRANSFORMER_TYPE = 'vit_custom'.
key("MODEL.CUSTOM_VIT.PATCH_SIZE", 8, SHAPE(low=1))
key("MODEL.CUSTOM_VIT.EMBED_DIM", 96, SHAPE(low=1))
key("MODEL.CUSTOM_VIT.DEPTH", 4, SHAPE(low=1))
key("MODEL.CUSTOM_VIT.NUM_HEADS", 4, SHAPE(low=1))
# Output (projected) token width; 0 keeps EMBED_DIM without a projection.
key("MODEL.CUSTOM_VIT.OUT_DIM", 64, SHAPE(low=0, what='an integer >= 0 (0: no projection)'))
# Use F.scaled_dot_product_attention inside the backbone (fused kernels on CUDA).
key("MODEL.FUSED_ATTN", True, TRAIN)
# Per-block activation checkpointing of the backbone (torch.utils.checkpoint, use_reentrant=False): each
# block's activations are recomputed in the backward instead of kept, trading about one more forward of the
# backbone for most of its activation memory (tools/gpu_memory.py). Same loss and gradients.
key("MODEL.GRAD_CHECKPOINT", False, FREE)
# torch.compile the model's forward (nn.Module.compile; state-dict keys are unchanged).
key("MODEL.COMPILE", False, FREE)
# SIE camera embedding: a learned [num_cameras, 1, width] table added to the class token before the
# position embedding, scaled by SIE_COE.
key("MODEL.SIE_CAMERA", True, SHAPE)
key("MODEL.SIE_COE", 1.0, MODEL)
# Heads. 1: the three class tokens concatenated -> one BN neck + classifier. 0: one per modality.
key("MODEL.DIRECT", 1, SHAPE(choices=(0, 1)))
# Loss weights of the ID (cross-entropy with label smoothing) and triplet terms, per head.
key("MODEL.ID_LOSS_WEIGHT", 0.25, TRAIN(low=0.0, what='a weight >= 0'))
key("MODEL.TRIPLET_LOSS_WEIGHT", 1.0, TRAIN(low=0.0, what='a weight >= 0'))
# Label smoothing of the ID loss (0 disables).
key("MODEL.LABEL_SMOOTH", 0.1, TRAIN(low=0.0, high=1.0))
# Soft-margin triplet (log(1 + exp(d_ap - d_an))) when True, else margin ranking with SOLVER.MARGIN.
key("MODEL.NO_MARGIN", True, TRAIN)

# ---------------------------------------------------------------------------------------------------
# INPUT
# ---------------------------------------------------------------------------------------------------
# [H, W] of training and test images.
key("INPUT.SIZE_TRAIN", [256, 128], SHAPE)
key("INPUT.SIZE_TEST", [256, 128], SHAPE)
# Horizontal flip probability, random erasing probability, padding before the random crop.
key("INPUT.PROB", 0.5, TRAIN(low=0.0, high=1.0, what='a probability in [0, 1]'))
key("INPUT.RE_PROB", 0.5, TRAIN(low=0.0, high=1.0, what='a probability in [0, 1]'))
key("INPUT.PADDING", 10, TRAIN(low=0))
key("INPUT.PIXEL_MEAN", [0.5, 0.5, 0.5], MODEL)
key("INPUT.PIXEL_STD", [0.5, 0.5, 0.5], MODEL)
# False (official recipe): each modality draws its own flip / crop / erasing parameters.
# True: one draw is applied to all three modalities of a sample.
key("INPUT.SHARED_AUG_PARAMS", False, TRAIN)

# ---------------------------------------------------------------------------------------------------
# DATASETS
# ---------------------------------------------------------------------------------------------------
# One of 'RGBNT201', 'RGBNT100', 'MSVR310', 'WMVeID863' (alias 'MSVWild863'), 'Market1501-MM', 'Synthetic',
# or 'Custom' (a layout described by DATASETS.CUSTOM).
key("DATASETS.NAMES", DEFAULT_DATASET, DATA_SHAPE)
# Folder that holds the dataset folder (e.g. ROOT_DIR/RGBNT201/train_171).
key("DATASETS.ROOT_DIR", "./datasets", FREE(path=True, evaluated=True))
# Hold out training identities as a validation split (query = gallery = their samples) so the best
# epoch is chosen without the test set: a count (>= 1) or a fraction (< 1) of the training ids; 0 = off
# (the official recipe selects the best epoch on the test set).
key("DATASETS.VAL_IDS", 0.0, DATA_SHAPE(low=0.0, what='a count >= 1, a fraction < 1, or 0'))
# Datasets paired by file name (WMVeID863, Market1501-MM, Custom): a file without a partner of the same name
# in every modality folder stops the start with the list of such files; yes leaves them out, listing each
# in a warning.
key("DATASETS.SKIP_UNPAIRED", False, DATA)
# Your own data, no code (DATASETS.NAMES Custom; docs/data.md "Your own data").
# Folder under ROOT_DIR, and its split folders. GALLERY equal to QUERY: gallery = query (RGBNT201 style).
key("DATASETS.CUSTOM.FOLDER", "", DATA_SHAPE)
key("DATASETS.CUSTOM.TRAIN", "train", DATA_SHAPE)
key("DATASETS.CUSTOM.QUERY", "query", DATA_SHAPE)
key("DATASETS.CUSTOM.GALLERY", "gallery", DATA_SHAPE)
# The modalities of a sample, in batch order: any names with distinct first letters (TEST.MISS names them by
# that letter), e.g. [RGB, TI] for RGB + thermal data.
key("DATASETS.CUSTOM.MODALITIES", ["RGB", "NI", "TI"], DATA_SHAPE)
# The folder of each of MODALITIES inside a split (or inside an id folder), in the same order. Naming one
# folder several times duplicates that modality, e.g. [images, images, images] runs RGB-only data as RGB
# three times.
key("DATASETS.CUSTOM.MODALITY_FOLDERS", ["RGB", "NI", "TI"], DATA_SHAPE)
# yes: <split>/<id>/<modality folder>/file (the id is the folder name unless PATTERN has an id group).
key("DATASETS.CUSTOM.ID_FOLDERS", False, DATA_SHAPE)
# yes: each file holds the modalities side by side, left to right in TILE_ORDER (an order of MODALITIES; no
# modality folders).
key("DATASETS.CUSTOM.TILED", False, DATA_SHAPE)
key("DATASETS.CUSTOM.TILE_ORDER", ["RGB", "NI", "TI"], DATA_SHAPE)
# Regular expression searched in each file name, with named groups id, camera and optionally scene.
key("DATASETS.CUSTOM.PATTERN", "^(?P<id>-?\\d+)_c(?P<camera>\\d+)", DATA_SHAPE)
# Camera number of the first camera in file names (1: c1 is the first camera; 0: c0 is).
key("DATASETS.CUSTOM.CAMERA_BASE", 1, DATA_SHAPE(choices=(0, 1)))
# Evaluation: remove gallery samples of the query's identity seen by the same 'camera' or in the same 'scene'.
key("DATASETS.CUSTOM.PROTOCOL", "camera", DATA_SHAPE(choices=('camera', 'scene')))
# Identities to leave out everywhere (Market-1501's junk images have id -1).
key("DATASETS.CUSTOM.IGNORE_IDS", [-1], DATA_SHAPE)
# Synthetic benchmark (written in the RGBNT201 layout under ROOT_DIR on first use).
key("DATASETS.SYNTHETIC.NUM_TRAIN_IDS", 48, DATA_SHAPE(low=1))
key("DATASETS.SYNTHETIC.NUM_TEST_IDS", 24, DATA(low=1))
key("DATASETS.SYNTHETIC.IMAGES_PER_ID", 8, DATA(low=1))
key("DATASETS.SYNTHETIC.NUM_CAMERAS", 3, DATA_SHAPE(low=1))
# [H, W] of the generated images.
key("DATASETS.SYNTHETIC.SIZE", [64, 32], DATA)
key("DATASETS.SYNTHETIC.SEED", 0, DATA)
# The modalities read (all three are written), in batch order: e.g. [RGB, TI] for an RGB + thermal benchmark.
key("DATASETS.SYNTHETIC.MODALITIES", ["RGB", "NI", "TI"], DATA_SHAPE)

# ---------------------------------------------------------------------------------------------------
# DATALOADER
# ---------------------------------------------------------------------------------------------------
key("DATALOADER.NUM_WORKERS", 4, FREE(low=0))
# 'ram': decode every training image once, at the input size, into one shared uint8 store the workers read
# (its size is printed first; refused when it would not fit in memory). 'none': decode the files each epoch.
# The batches are the same either way.
key("DATALOADER.CACHE", "none", FREE(choices=('none', 'ram')))
# K: instances per identity in a P x K batch.
key("DATALOADER.NUM_INSTANCE", 8, TRAIN(batch_order=True, low=1))

# ---------------------------------------------------------------------------------------------------
# SOLVER
# ---------------------------------------------------------------------------------------------------
key("SOLVER.OPTIMIZER_NAME", "Adam", TRAIN(choices=('Adam', 'AdamW', 'SGD')))
key("SOLVER.MAX_EPOCHS", 50, TRAIN(low=1))
key("SOLVER.BASE_LR", 3.5e-4, TRAIN(low=0.0, what='a learning rate >= 0'))
# Bias parameters: LR x BIAS_LR_FACTOR and WEIGHT_DECAY_BIAS.
key("SOLVER.BIAS_LR_FACTOR", 2.0, TRAIN(low=0.0, what='a factor >= 0'))
key("SOLVER.WEIGHT_DECAY", 1e-4, TRAIN(low=0.0, what='a value >= 0'))
key("SOLVER.WEIGHT_DECAY_BIAS", 1e-4, TRAIN(low=0.0, what='a value >= 0'))
key("SOLVER.MOMENTUM", 0.9, TRAIN(low=0.0, high=1.0))
# Backbone LR. A value > 0 is the backbone's LR, whatever the backbone; 0 means BASE_LR x BACKBONE_LR_FACTOR.
# The default -1 is the official rule: 5e-6 for the CLIP ViT-B-16, BASE_LR x BACKBONE_LR_FACTOR for the
# ImageNet ViT-B/16 and the small ViT; a timm-named backbone (DINOv3, DINOv2, EVA02, ...) must set it.
key("SOLVER.BACKBONE_LR", -1.0,
    TRAIN(low=-1.0, what='a learning rate > 0, 0 (BASE_LR x BACKBONE_LR_FACTOR) or -1 (the official rule)'))
key("SOLVER.BACKBONE_LR_FACTOR", 0.8, TRAIN(low=0.0, what='a factor >= 0'))
# Per-layer LR decay of the backbone (1.0: off): block i of D gets the backbone LR x LAYER_DECAY ** (D - i),
# the embeddings x LAYER_DECAY ** (D + 1), the final norm the backbone LR.
key("SOLVER.LAYER_DECAY", 1.0, TRAIN(low=1e-12, high=1.0, what='a factor in (0, 1] (1: no per-layer decay)'))
# Classifier LR factor (the official MSVR310 recipe uses 100).
key("SOLVER.CLASSIFIER_LR_FACTOR", 1.0, TRAIN(low=0.0, what='a factor >= 0'))
# Margin of the triplet loss when MODEL.NO_MARGIN is False.
key("SOLVER.MARGIN", 0.3, TRAIN(low=0.0, what='a margin >= 0'))
# 'cosine' (timm CosineLRScheduler) or 'multistep'.
key("SOLVER.SCHEDULER", "cosine", TRAIN(choices=('cosine', 'multistep')))
# Warmup length in epochs. Cosine schedule: every group warms linearly from WARMUP_FACTOR x BASE_LR
# (an absolute LR, as the official factory's 0.1 x BASE_LR) to its own LR. Multi-step schedule: each
# group's LR is scaled from WARMUP_FACTOR to 1 (relative; the official multi-step default is 0.01).
key("SOLVER.WARMUP_ITERS", 10, TRAIN(low=0))
key("SOLVER.WARMUP_FACTOR", 0.1, TRAIN(low=0.0, what='a factor >= 0'))
# Cosine schedule: yes warms each group up from WARMUP_FACTOR x its own LR (a backbone at 5e-6 starts at
# 5e-7); no (official) starts every group at WARMUP_FACTOR x BASE_LR, so a backbone whose LR is below that
# starts above its target and ramps down during the warmup.
key("SOLVER.WARMUP_RELATIVE", False, TRAIN)
# Cosine floor as a fraction of BASE_LR (an absolute LR shared by every group, as the official factory).
key("SOLVER.MIN_LR_FACTOR", 0.001, TRAIN(low=0.0, what='a factor >= 0'))
# LR noise of the cosine schedule (timm): in the epochs [start, end) given as fractions of MAX_EPOCHS
# ([start] alone: from start to the end), every group's LR is multiplied by 1 + n with n a normal draw
# (std LR_NOISE_STD, redrawn until |n| < LR_NOISE_PCT) from a generator seeded with LR_NOISE_SEED + epoch.
# The official recipe passes the range (0, MAX_EPOCHS): [0.0, 1.0]. [] switches the noise off.
key("SOLVER.LR_NOISE_RANGE", [0.0, 1.0], TRAIN)
key("SOLVER.LR_NOISE_PCT", 0.67, TRAIN(low=0.0, what='a value >= 0'))
key("SOLVER.LR_NOISE_STD", 1.0, TRAIN(low=0.0, what='a value >= 0'))
key("SOLVER.LR_NOISE_SEED", 42, TRAIN(low=0, high=2 ** 32 - 1, what='an integer in [0, 2**32 - 1]'))
# Multi-step schedule: the LR is multiplied by GAMMA at each of these epochs (from that epoch on).
key("SOLVER.STEPS", [40, 70], TRAIN)
key("SOLVER.GAMMA", 0.1, TRAIN(low=0.0, what='a factor >= 0'))
# Mixed precision on CUDA, fp32 master weights in every case: 'fp16' (the official recipe: float16
# autocast with a GradScaler), 'bf16' (bfloat16 autocast, no scaler; needs a GPU of compute capability
# >= 8.0) or 'none' (fp32). The CPU runs in fp32 unless AMP_ON_CPU.
key("SOLVER.AMP", "fp16", EVAL(choices=('bf16', 'fp16', 'none')))
# yes: run SOLVER.AMP on the CPU as well (CPU autocast; fp16 with a CPU GradScaler, which needs torch >= 2.3),
# to check the mixed-precision recipe's numerics, loss scale included, without a GPU. Slow: a check, not a
# way to train.
key("SOLVER.AMP_ON_CPU", False, EVAL)
# Under mixed precision, compute GAM's Gram volume and the triplet loss's distances in fp32 outside autocast
# (default): the fp16 Gram entries of aligned modalities overflow in the backward and collapse the loss
# scale. no: the official precision (fp16 Gram entries and distance matmul, fp32 determinant).
key("SOLVER.AMP_FP32_LOSSES", True, TRAIN)
# Under torch.distributed, triplet mining and GAM's contrastive term see the embeddings of every rank (the
# loss of the global batch, as on one GPU); no: each rank's own identities only.
key("SOLVER.GATHER_EMBEDDINGS", True, TRAIN)
key("SOLVER.SEED", 1234, TRAIN(batch_order=True, low=0, high=2 ** 32 - 1, what='an integer in [0, 2**32 - 1]'))
# On CPU, keep freed memory in the process heap (glibc) instead of returning it to the kernel, so large
# activations are not page-faulted and zero-filled again every step (utils/cpu.py).
key("SOLVER.CPU_KEEP_FREED_MEMORY", True, FREE)
# Make CPU / cuDNN algorithms deterministic (two runs give identical weights).
key("SOLVER.DETERMINISTIC", False, TRAIN)
key("SOLVER.LOG_PERIOD", 10, FREE(low=1, what='an integer >= 1 (iterations between log lines)'))
key("SOLVER.EVAL_PERIOD", 1, TRAIN(low=0, what='an integer >= 0 (0: evaluate after the last epoch only)'))
# Save a numbered checkpoint every N epochs (0: only last and best).
key("SOLVER.CHECKPOINT_PERIOD", 0, FREE(low=0, what='an integer >= 0 (0: only last.pth and best.pth)'))
# Exponential moving average of the weights, updated after every step: ema = decay * ema + (1 - decay) *
# weights (0: off; 0.999 / 0.9998 are usual). The average is evaluated and written to best.pth; last.pth
# keeps the trained weights and the average (engine/hooks.py EMA).
key("SOLVER.EMA_DECAY", 0.0, TRAIN(low=0.0, high=1.0 - 1e-12, what='a decay in [0, 1) (0: no EMA of the weights)'))
# Total batch size (P x K).
key("SOLVER.IMS_PER_BATCH", 64, TRAIN(batch_order=True, low=1))

# ---------------------------------------------------------------------------------------------------
# TEST
# ---------------------------------------------------------------------------------------------------
key("TEST.IMS_PER_BATCH", 128, FREE(low=1))
# Checkpoint evaluated by test.py.
key("TEST.WEIGHT", "", FREE(path=True))
# k-reciprocal re-ranking and its parameters.
key("TEST.RE_RANKING", False, EVAL)
key("TEST.RE_RANKING_K1", 20, EVAL(low=1))
key("TEST.RE_RANKING_K2", 6, EVAL(low=1))
key("TEST.RE_RANKING_LAMBDA", 0.3, EVAL(low=0.0, high=1.0, what='a weight in [0, 1]'))
# L2-normalise the test feature.
key("TEST.FEAT_NORM", True, EVAL)
# Missing-modality evaluation: '' (none) or the first letters of the modalities to zero, in the dataset's
# order (RGB / NI / TI: r, n, t, rn, rt, nt; utils.modalities.miss_settings), zeroed after normalisation,
# query and gallery alike; 'all': test.py reports the full input, every setting and their average in one
# run (training then selects epochs on the full input); 'any': the table of every query setting against every
# gallery setting (query and gallery with different modalities present; training selects on the full input).
# The config check lists the values for the dataset.
key("TEST.MISS", "", EVAL)
# One query / gallery pair of settings ('' = full input; TEST.MISS then stays empty): the queries encoded with
# the modalities of MISS_QUERY missing, the gallery with those of MISS_GALLERY (MDReID's protocol).
key("TEST.MISS_QUERY", "", EVAL)
key("TEST.MISS_GALLERY", "", EVAL)
# SIE camera embedding at test time: 'index' (the learned row of each camera id; ids beyond the trained
# table get the table's mean) or 'mean' (every sample gets the mean row: for another benchmark's cameras,
# e.g. cross-dataset evaluation).
key("TEST.CAMERA_EMBEDDING", "index", EVAL(choices=('index', 'mean')))
# Evaluate the untrained model before training (prints the "before" figure).
key("TEST.EVAL_BEFORE_TRAIN", False, FREE)

# ---------------------------------------------------------------------------------------------------
# LOG
# ---------------------------------------------------------------------------------------------------
# TensorBoard event files in OUTPUT_DIR/tensorboard (every loss term and the LR per iteration, epoch
# means, evaluation metrics) when the tensorboard package is installed (requirements-extras.txt).
key("LOG.TENSORBOARD", True, FREE)
# tqdm progress bars for training and evaluation; 'no' for cluster logs.
key("LOG.PROGRESS_BARS", True, FREE)

key("OUTPUT_DIR", "./output", FREE(path=True))

