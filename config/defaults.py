"""Every configuration key of the project, with its default and meaning.

YAML files under ``configs/`` override these values and ``KEY VALUE`` pairs on the command line override
both. ``config.get_cfg()`` (config/setup.py) returns a fresh, mutable clone of this tree whose
``merge_from_file`` / ``merge_from_list`` follow the command line's rules.
"""
from yacs.config import CfgNode as CN

from data.datasets.registry import DEFAULT_DATASET

_C = CN()

# ---------------------------------------------------------------------------------------------------
# MODEL
# ---------------------------------------------------------------------------------------------------
_C.MODEL = CN()
# 'auto' picks CUDA when available, else the CPU, but train.py stops instead of training a full-size
# backbone (anything but 'vit_custom') on the CPU; 'cpu' / 'cuda' / 'cuda:N' force a device.
_C.MODEL.DEVICE = "auto"
# The method (modeling/methods): 'Signal' (SIM + GAM + LAM), 'Baseline' (the shared encoder and its class-token
# heads only); a new method is one folder there (docs/extending.md).
_C.MODEL.METHOD = "Signal"
# Name used for checkpoint file names.
_C.MODEL.NAME = "Signal"
# Backbone shared by the three modalities:
#   'ViT-B-16'              CLIP ViT-B/16 visual tower (768 wide, QuickGELU, 512-d projected tokens)
#   'vit_base_patch16_224'  ImageNet ViT-B/16 (768-d tokens, no projection)
#   'vit_custom'            a small CLIP-style ViT sized by MODEL.CUSTOM_VIT (demo and tests)
_C.MODEL.TRANSFORMER_TYPE = "ViT-B-16"
# Local file with pretrained backbone weights: an OpenAI CLIP checkpoint (TorchScript archive or state
# dict) for 'ViT-B-16', a timm state dict for 'vit_base_patch16_224'. Empty: random initialisation.
_C.MODEL.PRETRAIN_PATH = ""
# Stochastic depth / dropout / attention dropout inside the backbone.
_C.MODEL.DROP_PATH = 0.0
_C.MODEL.DROP_OUT = 0.0
_C.MODEL.ATT_DROP_RATE = 0.0
# Size of the small backbone used when TRANSFORMER_TYPE = 'vit_custom'.
_C.MODEL.CUSTOM_VIT = CN()
_C.MODEL.CUSTOM_VIT.PATCH_SIZE = 8
_C.MODEL.CUSTOM_VIT.EMBED_DIM = 96
_C.MODEL.CUSTOM_VIT.DEPTH = 4
_C.MODEL.CUSTOM_VIT.NUM_HEADS = 4
# Output (projected) token width; 0 keeps EMBED_DIM without a projection.
_C.MODEL.CUSTOM_VIT.OUT_DIM = 64
# Use F.scaled_dot_product_attention inside the backbone (fused kernels on CUDA).
_C.MODEL.FUSED_ATTN = True
# Per-block activation checkpointing of the backbone (torch.utils.checkpoint, use_reentrant=False): each
# block's activations are recomputed in the backward instead of kept, trading about one more forward of the
# backbone for most of its activation memory (tools/gpu_memory.py). Same loss and gradients.
_C.MODEL.GRAD_CHECKPOINT = False
# torch.compile the model's forward (nn.Module.compile; state-dict keys are unchanged).
_C.MODEL.COMPILE = False
# SIE camera embedding: a learned [num_cameras, 1, width] table added to the class token before the
# position embedding, scaled by SIE_COE.
_C.MODEL.SIE_CAMERA = True
_C.MODEL.SIE_COE = 1.0
# Heads. 1: the three class tokens concatenated -> one BN neck + classifier. 0: one per modality.
_C.MODEL.DIRECT = 1
# Selective Interaction Module (SIM).
_C.MODEL.USE_SIM = True
# Intra-modal top-k (inter-modal keeps 2k of the other two modalities' patches).
_C.MODEL.TOPK = 80
# False (official code): unselected patches are multiplied by zero but stay in the key/value sequence.
# True (the paper's wording): unselected patches are masked out of the cross-attention.
_C.MODEL.SIM_MASK_UNSELECTED = False
# Number of heads of SIM's cross-attention.
_C.MODEL.SIM_HEADS = 8
# Global Alignment Module (GAM): Gram-determinant volume loss on mean patch tokens.
_C.MODEL.USE_GAM = True
_C.MODEL.GAM_WEIGHT = 0.2
# Initial value of GAM's learnable temperature.
_C.MODEL.GAM_TEMPERATURE = 0.07
# Local Alignment Module (LAM): deformable sampling + pairwise MSE.
_C.MODEL.USE_LAM = True
_C.MODEL.LAM_WEIGHT = 0.2
# 1 (official code): one offset channel broadcast to both axes. 2 (the paper's wording): independent
# y and x offsets.
_C.MODEL.LAM_OFFSET_CHANNELS = 1
# Kernel size and stride of LAM's depthwise offset convolution; scale of the tanh offsets.
_C.MODEL.LAM_KERNEL = 4
_C.MODEL.LAM_STRIDE = 4
_C.MODEL.LAM_OFFSET_RANGE = 2.0
# Loss weights of the ID (cross-entropy with label smoothing) and triplet terms, per head.
_C.MODEL.ID_LOSS_WEIGHT = 0.25
_C.MODEL.TRIPLET_LOSS_WEIGHT = 1.0
# Label smoothing of the ID loss (0 disables).
_C.MODEL.LABEL_SMOOTH = 0.1
# Soft-margin triplet (log(1 + exp(d_ap - d_an))) when True, else margin ranking with SOLVER.MARGIN.
_C.MODEL.NO_MARGIN = True

# ---------------------------------------------------------------------------------------------------
# INPUT
# ---------------------------------------------------------------------------------------------------
_C.INPUT = CN()
# [H, W] of training and test images.
_C.INPUT.SIZE_TRAIN = [256, 128]
_C.INPUT.SIZE_TEST = [256, 128]
# Horizontal flip probability, random erasing probability, padding before the random crop.
_C.INPUT.PROB = 0.5
_C.INPUT.RE_PROB = 0.5
_C.INPUT.PADDING = 10
_C.INPUT.PIXEL_MEAN = [0.5, 0.5, 0.5]
_C.INPUT.PIXEL_STD = [0.5, 0.5, 0.5]
# False (official recipe): each modality draws its own flip / crop / erasing parameters.
# True: one draw is applied to all three modalities of a sample.
_C.INPUT.SHARED_AUG_PARAMS = False

# ---------------------------------------------------------------------------------------------------
# DATASETS
# ---------------------------------------------------------------------------------------------------
_C.DATASETS = CN()
# One of 'RGBNT201', 'RGBNT100', 'MSVR310', 'WMVeID863' (alias 'MSVWild863'), 'Market1501-MM', 'Synthetic',
# or 'Custom' (a layout described by DATASETS.CUSTOM).
_C.DATASETS.NAMES = DEFAULT_DATASET
# Folder that holds the dataset folder (e.g. ROOT_DIR/RGBNT201/train_171).
_C.DATASETS.ROOT_DIR = "./datasets"
# Hold out training identities as a validation split (query = gallery = their samples) so the best
# epoch is chosen without the test set: a count (>= 1) or a fraction (< 1) of the training ids; 0 = off
# (the official recipe selects the best epoch on the test set).
_C.DATASETS.VAL_IDS = 0.0
# Datasets paired by file name (WMVeID863, Market1501-MM, Custom): a file without a partner of the same name
# in every modality folder stops the start with the list of such files; yes leaves them out, listing each
# in a warning.
_C.DATASETS.SKIP_UNPAIRED = False
# Your own data, no code (DATASETS.NAMES Custom; docs/data.md "Your own data").
_C.DATASETS.CUSTOM = CN()
# Folder under ROOT_DIR, and its split folders. GALLERY equal to QUERY: gallery = query (RGBNT201 style).
_C.DATASETS.CUSTOM.FOLDER = ""
_C.DATASETS.CUSTOM.TRAIN = "train"
_C.DATASETS.CUSTOM.QUERY = "query"
_C.DATASETS.CUSTOM.GALLERY = "gallery"
# The folders of RGB, NI and TI inside a split (or inside an id folder). Naming one folder several times
# duplicates that modality, e.g. [images, images, images] runs RGB-only data as RGB three times.
_C.DATASETS.CUSTOM.MODALITY_FOLDERS = ["RGB", "NI", "TI"]
# yes: <split>/<id>/<modality folder>/file (the id is the folder name unless PATTERN has an id group).
_C.DATASETS.CUSTOM.ID_FOLDERS = False
# yes: each file holds the three modalities side by side, left to right in TILE_ORDER (no modality folders).
_C.DATASETS.CUSTOM.TILED = False
_C.DATASETS.CUSTOM.TILE_ORDER = ["RGB", "NI", "TI"]
# Regular expression searched in each file name, with named groups id, camera and optionally scene.
_C.DATASETS.CUSTOM.PATTERN = "^(?P<id>-?\\d+)_c(?P<camera>\\d+)"
# Camera number of the first camera in file names (1: c1 is the first camera; 0: c0 is).
_C.DATASETS.CUSTOM.CAMERA_BASE = 1
# Evaluation: remove gallery samples of the query's identity seen by the same 'camera' or in the same 'scene'.
_C.DATASETS.CUSTOM.PROTOCOL = "camera"
# Identities to leave out everywhere (Market-1501's junk images have id -1).
_C.DATASETS.CUSTOM.IGNORE_IDS = [-1]
# Synthetic benchmark (written in the RGBNT201 layout under ROOT_DIR on first use).
_C.DATASETS.SYNTHETIC = CN()
_C.DATASETS.SYNTHETIC.NUM_TRAIN_IDS = 48
_C.DATASETS.SYNTHETIC.NUM_TEST_IDS = 24
_C.DATASETS.SYNTHETIC.IMAGES_PER_ID = 8
_C.DATASETS.SYNTHETIC.NUM_CAMERAS = 3
# [H, W] of the generated images.
_C.DATASETS.SYNTHETIC.SIZE = [64, 32]
_C.DATASETS.SYNTHETIC.SEED = 0

# ---------------------------------------------------------------------------------------------------
# DATALOADER
# ---------------------------------------------------------------------------------------------------
_C.DATALOADER = CN()
_C.DATALOADER.NUM_WORKERS = 4
# K: instances per identity in a P x K batch.
_C.DATALOADER.NUM_INSTANCE = 8

# ---------------------------------------------------------------------------------------------------
# SOLVER
# ---------------------------------------------------------------------------------------------------
_C.SOLVER = CN()
_C.SOLVER.OPTIMIZER_NAME = "Adam"
_C.SOLVER.MAX_EPOCHS = 50
_C.SOLVER.BASE_LR = 3.5e-4
# Bias parameters: LR x BIAS_LR_FACTOR and WEIGHT_DECAY_BIAS.
_C.SOLVER.BIAS_LR_FACTOR = 2.0
_C.SOLVER.WEIGHT_DECAY = 1e-4
_C.SOLVER.WEIGHT_DECAY_BIAS = 1e-4
_C.SOLVER.MOMENTUM = 0.9
# Backbone LR. A value > 0 is the backbone's LR, whatever the backbone; 0 means BASE_LR x BACKBONE_LR_FACTOR.
# The default -1 is the official rule: 5e-6 for the CLIP ViT-B-16, BASE_LR x BACKBONE_LR_FACTOR for the
# ImageNet ViT-B/16 and the small ViT; a timm-named backbone (DINOv3, DINOv2, EVA02, ...) must set it.
_C.SOLVER.BACKBONE_LR = -1.0
_C.SOLVER.BACKBONE_LR_FACTOR = 0.8
# Per-layer LR decay of the backbone (1.0: off): block i of D gets the backbone LR x LAYER_DECAY ** (D - i),
# the embeddings x LAYER_DECAY ** (D + 1), the final norm the backbone LR.
_C.SOLVER.LAYER_DECAY = 1.0
# Classifier LR factor (the official MSVR310 recipe uses 100).
_C.SOLVER.CLASSIFIER_LR_FACTOR = 1.0
# Margin of the triplet loss when MODEL.NO_MARGIN is False.
_C.SOLVER.MARGIN = 0.3
# 'cosine' (timm CosineLRScheduler) or 'multistep'.
_C.SOLVER.SCHEDULER = "cosine"
# Warmup length in epochs. Cosine schedule: every group warms linearly from WARMUP_FACTOR x BASE_LR
# (an absolute LR, as the official factory's 0.1 x BASE_LR) to its own LR. Multi-step schedule: each
# group's LR is scaled from WARMUP_FACTOR to 1 (relative; the official multi-step default is 0.01).
_C.SOLVER.WARMUP_ITERS = 10
_C.SOLVER.WARMUP_FACTOR = 0.1
# Cosine schedule: yes warms each group up from WARMUP_FACTOR x its own LR (a backbone at 5e-6 starts at
# 5e-7); no (official) starts every group at WARMUP_FACTOR x BASE_LR, so a backbone whose LR is below that
# starts above its target and ramps down during the warmup.
_C.SOLVER.WARMUP_RELATIVE = False
# Cosine floor as a fraction of BASE_LR (an absolute LR shared by every group, as the official factory).
_C.SOLVER.MIN_LR_FACTOR = 0.001
# LR noise of the cosine schedule (timm): in the epochs [start, end) given as fractions of MAX_EPOCHS
# ([start] alone: from start to the end), every group's LR is multiplied by 1 + n with n a normal draw
# (std LR_NOISE_STD, redrawn until |n| < LR_NOISE_PCT) from a generator seeded with LR_NOISE_SEED + epoch.
# The official recipe passes the range (0, MAX_EPOCHS): [0.0, 1.0]. [] switches the noise off.
_C.SOLVER.LR_NOISE_RANGE = [0.0, 1.0]
_C.SOLVER.LR_NOISE_PCT = 0.67
_C.SOLVER.LR_NOISE_STD = 1.0
_C.SOLVER.LR_NOISE_SEED = 42
# Multi-step schedule: the LR is multiplied by GAMMA at each of these epochs (from that epoch on).
_C.SOLVER.STEPS = [40, 70]
_C.SOLVER.GAMMA = 0.1
# Mixed precision on CUDA, fp32 master weights in every case: 'fp16' (the official recipe: float16
# autocast with a GradScaler), 'bf16' (bfloat16 autocast, no scaler; needs a GPU of compute capability
# >= 8.0) or 'none' (fp32). The CPU runs in fp32 unless AMP_ON_CPU.
_C.SOLVER.AMP = "fp16"
# yes: run SOLVER.AMP on the CPU as well (CPU autocast; fp16 with a CPU GradScaler, which needs torch >= 2.3),
# to check the mixed-precision recipe's numerics, loss scale included, without a GPU. Slow: a check, not a
# way to train.
_C.SOLVER.AMP_ON_CPU = False
# Under mixed precision, compute GAM's Gram volume and the triplet loss's distances in fp32 outside autocast
# (default): the fp16 Gram entries of aligned modalities overflow in the backward and collapse the loss
# scale. no: the official precision (fp16 Gram entries and distance matmul, fp32 determinant).
_C.SOLVER.AMP_FP32_LOSSES = True
# Under torch.distributed, triplet mining and GAM's contrastive term see the embeddings of every rank (the
# loss of the global batch, as on one GPU); no: each rank's own identities only.
_C.SOLVER.GATHER_EMBEDDINGS = True
_C.SOLVER.SEED = 1234
# On CPU, keep freed memory in the process heap (glibc) instead of returning it to the kernel, so large
# activations are not page-faulted and zero-filled again every step (utils/cpu.py).
_C.SOLVER.CPU_KEEP_FREED_MEMORY = True
# Make CPU / cuDNN algorithms deterministic (two runs give identical weights).
_C.SOLVER.DETERMINISTIC = False
_C.SOLVER.LOG_PERIOD = 10
_C.SOLVER.EVAL_PERIOD = 1
# Save a numbered checkpoint every N epochs (0: only last and best).
_C.SOLVER.CHECKPOINT_PERIOD = 0
# Exponential moving average of the weights, updated after every step: ema = decay * ema + (1 - decay) *
# weights (0: off; 0.999 / 0.9998 are usual). The average is evaluated and written to best.pth; last.pth
# keeps the trained weights and the average (engine/hooks.py EMA).
_C.SOLVER.EMA_DECAY = 0.0
# Total batch size (P x K).
_C.SOLVER.IMS_PER_BATCH = 64

# ---------------------------------------------------------------------------------------------------
# TEST
# ---------------------------------------------------------------------------------------------------
_C.TEST = CN()
_C.TEST.IMS_PER_BATCH = 128
# Checkpoint evaluated by test.py.
_C.TEST.WEIGHT = ""
# k-reciprocal re-ranking and its parameters.
_C.TEST.RE_RANKING = False
_C.TEST.RE_RANKING_K1 = 20
_C.TEST.RE_RANKING_K2 = 6
_C.TEST.RE_RANKING_LAMBDA = 0.3
# L2-normalise the test feature.
_C.TEST.FEAT_NORM = True
# Missing-modality evaluation: '' (none) or one of r, n, t, rn, rt, nt (those inputs are zeroed after
# normalisation, query and gallery alike); 'all': test.py reports the full input, the six settings and
# their average in one run (training then selects epochs on the full input).
_C.TEST.MISS = ""
# SIE camera embedding at test time: 'index' (the learned row of each camera id; ids beyond the trained
# table get the table's mean) or 'mean' (every sample gets the mean row: for another benchmark's cameras,
# e.g. cross-dataset evaluation).
_C.TEST.CAMERA_EMBEDDING = "index"
# Evaluate the untrained model before training (prints the "before" figure).
_C.TEST.EVAL_BEFORE_TRAIN = False

# ---------------------------------------------------------------------------------------------------
# LOG
# ---------------------------------------------------------------------------------------------------
_C.LOG = CN()
# TensorBoard event files in OUTPUT_DIR/tensorboard (every loss term and the LR per iteration, epoch
# means, evaluation metrics) when the tensorboard package is installed (requirements-extras.txt).
_C.LOG.TENSORBOARD = True
# tqdm progress bars for training and evaluation; 'no' for cluster logs.
_C.LOG.PROGRESS_BARS = True

_C.OUTPUT_DIR = "./output"

