"""The configuration schema: frozen dataclasses, one per concern. `pipeline.config.load` merges
the YAML layers with OmegaConf and builds these strictly from their type hints; stages receive a
`Config` and never read files or environment on their own."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

REFIT = -1  # the fold number of a full-data refit (`fold=all`): trained on every labelled image


def bounded(default, lo=None, hi=None, *, lo_open: bool = False, hi_open: bool = False):
    """A field whose value (every item of a list) must lie in [lo, hi] (open ends with lo_open /
    hi_open; None: unbounded); `config.load` checks it when the config is built."""
    return field(default=default, metadata={"range": (lo, hi, lo_open, hi_open)})


@dataclass(frozen=True)
class SplitConfig:
    annotations: str | None = None  # COCO json, relative to the data root
    images: str | None = None  # image folder (maskdir) or base folder of COCO file_name
    masks: str | None = None  # PNG label maps with the same stems as the images


@dataclass(frozen=True)
class DataConfig:
    name: str
    root: str
    demo: str | None = None  # a built-in generator writes this data (`make demo-data`): trash | defects | defects_overlap | slides
    format: str = "coco"  # coco | maskdir
    classes: tuple[str, ...] = ()
    ignore_index: int = 255
    unlabelled: str = "background"  # COCO pixels with no annotation: "background" (class 0) or "ignore"
    category_map: dict = field(default_factory=dict)  # COCO category id -> class index; default by name
    # area_desc | order | priority | ignore: one class per pixel; multilabel: every class kept (label
    # maps hold one bit per class; mask folders hold one folder of binary PNGs per class)
    overlap: str = "area_desc"
    mask_values: dict = field(default_factory=dict)  # mask folders: raw PNG value -> class index, e.g. {0: 0, 255: 1}
    priority: tuple[str, ...] = ()  # for overlap=priority: class names, highest first
    strict: bool = True
    train: SplitConfig = SplitConfig()
    val: SplitConfig | None = None
    test: SplitConfig | None = None
    truth: SplitConfig | None = None  # local ground truth of the test split (the organisers' labels)

    @property
    def num_classes(self) -> int:
        return len(self.classes)


@dataclass(frozen=True)
class FoldsConfig:
    k: int = bounded(5, 2)
    seed: int = 42
    group_regex: str | None = None  # first capture group (or whole match) of the image stem
    splits: tuple[str, ...] = ("train",)  # labelled splits pooled before folding (e.g. [train, val])
    holdout: str | None = None  # a split kept whole as one extra fold (warned about when it shares groups)
    # Folds that mirror how the test set relates to the training data (see folds.py): the frame
    # order inside a group, the latest share of a group's frames split off as "<group>@tail", and
    # an explicit fold per group (groups not listed train in every fold and are never validated)
    order_regex: str | None = None  # first capture group: the frame number (compared as an integer)
    tail: dict = field(default_factory=dict)  # group -> share of its frames (0..1), the latest by order_regex
    assign: dict = field(default_factory=dict)  # group (or "<group>@tail") -> fold index


@dataclass(frozen=True)
class SubmissionConfig:
    format: str = "rle"  # rle: a row per (image, class) | prediction_string: a row per image, the label map flattened
    id_column: str = "ImageId"
    class_column: str = "ClassId"  # rle without id_template
    rle_column: str = "EncodedPixels"  # the value column (PredictionString for that format)
    id_template: str | None = None  # rle: one id column, e.g. "{image}_{class_name}" (Clouds' Image_Label)
    image_id: str = "stem"  # how an image is named: stem | file_name (with extension and folder)
    size: tuple[int, int] | None = None  # [height, width] the masks are written at (nearest); default each image's
    # which source pixel a resized pixel takes: centre (PIL's nearest: the source pixel under the
    # output pixel's centre) | corner (OpenCV's INTER_NEAREST, so albumentations' A.Resize: floor(i * in / out))
    nearest: str = "centre"
    empty: str = ""  # the value of an empty mask: "" or e.g. "-1"
    rle_order: str = "column"  # column (top-to-bottom, then left-to-right) | row
    class_ids: tuple[int, ...] = ()  # classes that get a row; default: every class
    empty_rows: bool = True  # a row for absent classes (with the empty value)
    postprocess: bool = True  # apply the rules `make tune` wrote (preds/<exp>/postprocess.json), when there are any


@dataclass(frozen=True)
class ModelConfig:
    name: str
    arch: str  # deconvnet or an SMP architecture name (Unet, UnetPlusPlus, FPN, DeepLabV3Plus, PSPNet, Segformer)
    encoder_name: str = "resnet34"
    encoder_weights: str | None = None  # None, a local file, or an SMP name resolved from the torch-hub cache
    pad_multiple: int = bounded(32, 1)
    params: dict = field(default_factory=dict)  # extra keyword arguments of the architecture


@dataclass(frozen=True)
class LossTerm:
    name: str  # ce | dice | focal | lovasz
    weight: float = bounded(1.0, 0)
    params: dict = field(default_factory=dict)


@dataclass(frozen=True)
class RuntimeConfig:
    """Where and how every stage computes: training, inference, pseudo-labelling and EDA alike."""
    device: str = "auto"  # auto | cpu | cuda
    amp: str = "auto"  # auto (GPU: bf16 where supported, else fp16; CPU: bf16 with AMX/AVX512-BF16, else off) | bf16 | fp16 | off
    channels_last: bool = True  # NHWC on GPUs and CPUs alike (oneDNN's convolutions prefer it too)
    compile: bool = False
    seed: int = 42
    progress: bool = True
    # on the CPU under bf16 autocast, depthwise convolutions of a training step run in fp32 (oneDNN's
    # bf16 depthwise backward is 3-6x slower; EfficientNet/MobileNet encoders train ~1.3x faster);
    # without gradients (validation, inference) they stay in bf16, whose forward is the faster one
    depthwise_fp32: bool = True


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = bounded(20, 1)
    batch_size: int = bounded(8, 1)
    crop: tuple[int, int] | None = None  # random crop (h, w) for training; None trains on whole images
    resize: tuple[int, int] | None = None  # resize (h, w) before cropping, train and val alike
    # large images: train on (h, w) windows read from a memory-mapped decoded copy of each image
    # instead of whole images; validation on a grid of such windows. Replaces crop and resize.
    tile: tuple[int, int] | None = None
    tile_fg: float = bounded(0.5, 0, 1)  # share of training windows centred on a labelled non-background pixel
    tiles_per_image: int = bounded(8, 1)  # training windows per image per epoch
    optimizer: str = "adamw"  # adamw | sgd
    lr_encoder: float = bounded(1e-4, 0)  # 0 freezes the encoder
    lr_decoder: float = bounded(1e-3, 0)
    wd_encoder: float = bounded(1e-4, 0)
    wd_decoder: float = bounded(1e-4, 0)
    no_decay_norm_bias: bool = True
    momentum: float = bounded(0.9, 0, 1, hi_open=True)
    scheduler: str = "cosine"  # cosine (with warm-up) | poly | plateau | none
    warmup_epochs: float = bounded(0.0, 0)
    min_lr_ratio: float = bounded(0.01, 0, 1)
    poly_power: float = bounded(0.9, 0, lo_open=True)
    plateau_patience: int = bounded(3, 0)
    accum_steps: int = bounded(1, 1)
    clip_grad: float | None = bounded(None, 0, lo_open=True)
    ema_decay: float | None = bounded(None, 0, 1, lo_open=True, hi_open=True)
    swa_epochs: int = bounded(0, 0)  # average the weights of the last N epochs (BN statistics recomputed) -> swa.pt
    pseudo: str | None = None  # add the pseudo-labels of outputs/<data>/pseudo/<this name> to training (never validation)
    # epochs of the full-data refit (default: train.epochs); it trains on every labelled image (and the
    # pseudo-labelled test images), about twice a fold's images per epoch
    refit_epochs: int | None = None  # >= 1 (checked with its own message)
    refit_pseudo: bool = False  # the full-data refit also trains on this experiment's pseudo-labels of the test images (train-all makes them with the fold ensemble)
    # the full-data refit starts from one of this experiment's fold models instead of the pretrained
    # encoder: largest_fold (the fold model trained on the most images) or fold<k>; a short refit then
    # adds every labelled image (and the pseudo-labels) to a model that has already converged
    refit_init: str | None = None
    init_from: str | None = None  # start from another run's weights: "<exp>/fold<k>", "<exp>/all" or a .pt file
    patience: int | None = bounded(None, 1)  # early stopping, in validations without a better val score (competition.metric)
    val_every: int = bounded(1, 1)  # validate every N epochs (and always after the last)
    max_bad_steps: int = bounded(5, 1)  # consecutive non-finite losses before the run stops
    num_workers: int = bounded(0, 0)
    losses: tuple[LossTerm, ...] = (LossTerm("ce"),)
    augment: tuple[dict, ...] = ()  # albumentations transforms by class name, train only
    rare_crop: float = bounded(0.0, 0, 1)  # share of training crops that contain pixels of a rare class (needs train.crop)
    rare_classes: tuple[str, ...] = ()  # default: the third of the classes with the fewest training pixels
    # share of training images onto which another training image's pixels of train.paste_classes are
    # copied, with their labels, at the same place (ClassMix-style), before the augmentations
    class_paste: float = bounded(0.0, 0, 1)
    paste_classes: tuple[str, ...] = ()  # default: train.rare_classes (or their default)
    max_steps_per_epoch: int | None = None  # >= 1 (checked with its own message)
    trackers: tuple[str, ...] = ()  # besides metrics.csv: tensorboard | mlflow
    mlflow_uri: str | None = None  # default: file store <outputs>/mlruns (`mlflow ui --backend-store-uri` it)
    on_change: str = "refuse"  # a run folder started with another config: refuse | restart (old run kept aside)


@dataclass(frozen=True)
class InferConfig:
    tta: tuple[str, ...] = ("hflip",)  # hflip | vflip | d4 | scale:<s1>,<s2>...
    experiments: tuple[str, ...] = ()  # default: the current experiment
    folds: tuple[int, ...] = ()  # default: every fold with a best checkpoint
    weights: tuple[float, ...] = bounded((), 0, lo_open=True)  # one per experiment (default equal)
    batch_size: int = bounded(8, 1)  # images, or windows with infer.window
    # sliding-window inference for images too large to predict whole: (h, w) windows overlapping by
    # `overlap` of their size, blended with a Hann weight; memory depends on the window, not the image
    window: tuple[int, int] | None = None
    overlap: float = bounded(0.25, 0, 1, hi_open=True)
    num_workers: int = bounded(2, 0)  # image decoding in loader workers, so the model is not left waiting
    refit: str = "off"  # the full-data refit (fold=all) for the test set: off | with (the fold models) | only
    checkpoint: str = "best"  # which weights of each run: best | swa (train.swa_epochs)
    save_probs: bool = False  # the probabilities of the test and OOF images (always for multilabel)
    # how they are kept: float16 (~3 significant digits) | uint8 (steps of 1/255: half the disk)
    probs_dtype: str = "float16"
    oof: bool = True
    # added to cv_score: the gap between the fold models' CV and the score of the ensemble actually
    # submitted, measured by simulating the competition on labelled data (bench/camvid_simulation.py)
    cv_offset: float = bounded(0.0, -0.5, 0.5)
    # that gap's sd across simulated draws: widens cv_score's interval into cv_leaderboard_interval
    cv_offset_sd: float = bounded(0.0, 0.0, 0.5)
    analysis_images: int = bounded(8, 0)  # the worst OOF images drawn on the error-analysis page


@dataclass(frozen=True)
class CompetitionConfig:
    # miou: dataset-level (intersections and unions summed over images; CamVid) | miou_image: each
    # image's mIoU, averaged | dice_image_class: mean Dice over (image, class), empty vs empty = 1
    metric: str = "miou"
    task: str = "single"  # single: softmax, one class per pixel | multilabel: one sigmoid per class
    background: int | None = None  # the class post-processing gives removed pixels to (make tune); none: no tuning
    # make tune's class-bias alpha, times this before it is applied (and before the held-out folds score it):
    # below 1 shrinks the biases toward the plain argmax. On ten CamVid simulation curves the pseudo-test
    # peaked at alpha 0.3-0.5 where tune chose 0.6-0.8 (bench/results/camvid_simulation_*_alpha_curve.json)
    bias_shrink: float = bounded(1.0, 0.0, 1.0)

    @property
    def multilabel(self) -> bool:
        return self.task == "multilabel"


@dataclass(frozen=True)
class PseudoConfig:
    threshold: float = bounded(0.9, 0, 1, lo_open=True)  # pixels whose ensemble probability is below this are left unlabelled (ignored)
    split: str = "test"  # the unlabelled images to label


@dataclass(frozen=True)
class Config:
    data: DataConfig
    model: ModelConfig
    train: TrainConfig
    infer: InferConfig
    folds: FoldsConfig
    submission: SubmissionConfig
    exp: str
    runtime: RuntimeConfig = RuntimeConfig()
    competition: CompetitionConfig = CompetitionConfig()
    pseudo: PseudoConfig = PseudoConfig()
    fold: int = 0
    outputs: str = "outputs"
    submissions: str = "submissions"

    @property
    def data_root(self) -> Path:
        return Path(self.data.root)

    @property
    def out_dir(self) -> Path:
        return Path(self.outputs) / self.data.name

    def run_dir(self, fold: int | None = None, exp: str | None = None) -> Path:
        k = self.fold if fold is None else fold
        return self.out_dir / "runs" / (exp or self.exp) / ("all" if k == REFIT else f"fold{k}")

    def pseudo_dir(self, exp: str | None = None) -> Path:
        return self.out_dir / "pseudo" / (exp or self.exp)

    def preds_dir(self, exp: str | None = None) -> Path:
        return self.out_dir / "preds" / (exp or self.exp)

    @property
    def folds_csv(self) -> Path:
        return self.out_dir / "folds.csv"
