"""Engine config defaults: Dassl's key names, values suited to CLIP prompt tuning."""
from __future__ import annotations

from yacs.config import CfgNode as CN

FINAL_MODELS = ("last_step", "best_val")  # TEST.FINAL_MODEL: the model tested after training


def get_engine_defaults() -> CN:
    """The config tree shared by every trainer and dataset (before their own nodes)."""
    _C = CN()
    _C.VERSION = 1
    _C.OUTPUT_DIR = "./output"
    _C.RESUME = ""
    _C.SEED = -1
    _C.USE_CUDA = True
    _C.VERBOSE = True

    _C.INPUT = CN()
    _C.INPUT.SIZE = (224, 224)
    _C.INPUT.INTERPOLATION = "bicubic"
    _C.INPUT.TRANSFORMS = ()
    _C.INPUT.NO_TRANSFORM = False
    _C.INPUT.PIXEL_MEAN = [0.48145466, 0.4578275, 0.40821073]
    _C.INPUT.PIXEL_STD = [0.26862954, 0.26130258, 0.27577711]
    _C.INPUT.CROP_PADDING = 4
    _C.INPUT.RRCROP_SCALE = (0.08, 1.0)
    _C.INPUT.CUTOUT_N = 1
    _C.INPUT.CUTOUT_LEN = 16
    _C.INPUT.CUTOUT_FACTOR = 0.4  # random_crop_or_cutout: cutout side / image side
    _C.INPUT.TEST_RESIZE = "crop"  # crop: shorter side + center crop; square: resize to SIZE

    _C.DATASET = CN()
    _C.DATASET.ROOT = ""
    _C.DATASET.NAME = ""
    _C.DATASET.SOURCE_DOMAINS = ()
    _C.DATASET.TARGET_DOMAINS = ()
    # Training images (train_x; taidpt/datasets/train_labels.py, DATA.md "Partial labels").
    _C.DATASET.NUM_SHOTS = -1  # K >= 1: seeded subset with >= K positive images per class; < 1 off
    _C.DATASET.PARTIAL_PROB = 1.0  # fraction of training labels kept known, in (0, 1]; rest -> 0
    _C.DATASET.PARTIAL_DIR = "partial/VOC2007/partial-labels"  # VOC train_proportion_{p}.txt files
    _C.DATASET.VAL_STRIDE = -1  # N > 0: val = test[::N]; -1: the dataset's own val split
    _C.DATASET.SUBSAMPLE_CLASSES = "all"
    # VOC "difficult" (label 0) in evaluation: "negative" (reference) or "ignore" (standard).
    _C.DATASET.DIFFICULT = "negative"
    # MultiLabelImageList: CSV/TXT lists (relative to ROOT) and a class-name file.
    _C.DATASET.TRAIN_LIST = ""
    _C.DATASET.VAL_LIST = ""
    _C.DATASET.TEST_LIST = ""
    _C.DATASET.CLASSNAMES_FILE = ""
    # Caption corpus used instead of training images (TaI-DPT).
    _C.DATASET.CAPTIONS = CN()
    _C.DATASET.CAPTIONS.SOURCE = ""  # "", coco, openimages, text, jsonl, synthetic
    _C.DATASET.CAPTIONS.PATH = ""  # relative paths are resolved against DATASET.ROOT
    _C.DATASET.CAPTIONS.PER_IMAGE = 1  # COCO: captions kept per image (reference 1; -1 all)
    _C.DATASET.CAPTIONS.MAX_CAPTIONS = -1  # random subset of N captions (Figure 7); -1 all
    _C.DATASET.CAPTIONS.LIMIT_PER_CLASS = -1  # NUS-WIDE "limit" sampler (1000); -1 off
    _C.DATASET.CAPTIONS.TEMPLATES = True  # add 89 template sentences per class
    _C.DATASET.CAPTIONS.CACHE_DIR = ""  # "" -> $TAIDPT_CACHE or ~/.cache/taidpt
    # Train on the captions' frozen CLIP text features, computed once into <cache>/caption_features
    # (memory-mapped; keyed by the CLIP text weights and the tokens); False re-encodes every batch.
    _C.DATASET.CAPTIONS.FEATURE_CACHE = True
    _C.DATASET.CAPTIONS.FEATURE_CACHE_DTYPE = "fp16"  # fp16 (half the size) or fp32 (exact)

    _C.DATALOADER = CN()
    _C.DATALOADER.NUM_WORKERS = 4
    _C.DATALOADER.PREFETCH_FACTOR = 2  # batches each image worker loads ahead (NUM_WORKERS > 0)
    _C.DATALOADER.K_TRANSFORMS = 1
    _C.DATALOADER.RETURN_IMG0 = False
    _C.DATALOADER.TRAIN_X = CN()
    _C.DATALOADER.TRAIN_X.SAMPLER = "RandomSampler"
    _C.DATALOADER.TRAIN_X.BATCH_SIZE = 32
    _C.DATALOADER.TEST = CN()
    _C.DATALOADER.TEST.SAMPLER = "SequentialSampler"
    _C.DATALOADER.TEST.BATCH_SIZE = 32

    _C.MODEL = CN()
    _C.MODEL.INIT_WEIGHTS = ""
    # Load checkpoints with full unpickling, which runs any code they hold (--trust-checkpoint).
    # Off: only tensors, plain data and Dassl's optimiser / scheduler classes are rebuilt.
    _C.MODEL.TRUST_CHECKPOINT = False
    # Load a checkpoint trained on another class list (evaluation, INIT_WEIGHTS; logged). Resume
    # always refuses one (--allow-other-classes).
    _C.MODEL.ALLOW_OTHER_CLASSES = False
    _C.MODEL.BACKBONE = CN()
    _C.MODEL.BACKBONE.NAME = "RN50"
    _C.MODEL.BACKBONE.PATH = ""  # a CLIP file (JIT archive or state dict); overrides NAME lookup
    _C.MODEL.BACKBONE.PRETRAINED = True
    _C.MODEL.CHANNELS_LAST = True  # ResNet image tower in channels_last memory format on CUDA
    _C.MODEL.COMPILE = False  # torch.compile the frozen CLIP's image-feature extractor
    _C.MODEL.HEAD = CN()
    _C.MODEL.HEAD.NAME = ""

    _C.OPTIM = CN()
    _C.OPTIM.NAME = "sgd"
    _C.OPTIM.LR = 0.002
    _C.OPTIM.WEIGHT_DECAY = 5e-4
    _C.OPTIM.MOMENTUM = 0.9
    _C.OPTIM.SGD_DAMPNING = 0.0
    _C.OPTIM.SGD_NESTEROV = False
    _C.OPTIM.ADAM_BETA1 = 0.9
    _C.OPTIM.ADAM_BETA2 = 0.999
    _C.OPTIM.LR_SCHEDULER = "cosine"
    _C.OPTIM.STEPSIZE = (-1,)
    _C.OPTIM.GAMMA = 0.1
    _C.OPTIM.MAX_EPOCH = 10
    _C.OPTIM.WARMUP_EPOCH = -1
    _C.OPTIM.WARMUP_TYPE = "linear"
    _C.OPTIM.WARMUP_CONS_LR = 1e-5
    _C.OPTIM.WARMUP_MIN_LR = 1e-5
    _C.OPTIM.WARMUP_RECOUNT = True

    _C.TRAIN = CN()
    _C.TRAIN.CHECKPOINT_FREQ = 1  # save every N epochs (and the last); 0: the last only
    _C.TRAIN.CHECKPOINT_ITER_FREQ = 0  # also save every N batches inside an epoch; 0: never
    _C.TRAIN.PRINT_FREQ = 10
    _C.TRAIN.COUNT_ITER = "train_x"

    _C.TEST = CN()
    _C.TEST.EVALUATOR = "MLClassification"
    _C.TEST.PER_CLASS_RESULT = False  # also log the headline head's AP of every class
    _C.TEST.COMPUTE_CMAT = False
    _C.TEST.NO_TEST = False
    _C.TEST.SPLIT = "test"  # "test" or "val"; every evaluation writes predictions_<split>.npz
    _C.TEST.FINAL_MODEL = "last_step"  # or "best_val" (paper reproduction)
    # Evaluate from the split's frozen image features, computed once into $TAIDPT_CACHE and reused
    # by every later evaluation on the same split and transform (TaIDPT, ZeroshotCLIP, DualCoOp).
    _C.TEST.FEATURE_CACHE = False

    _C.TRAINER = CN()
    _C.TRAINER.NAME = ""
    return _C
