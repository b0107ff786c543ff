"""The typed schema of the kit's configuration: one dataclass per section, each key with its default and
the comment after it saying what it does: the one place a key is documented (docs/config.md is generated
from these comments by comp.schema_doc, `make docs`; tests/test_docs.py fails when it is out of date).
comp.config reads, merges and checks values against it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# train.compile / predict.compile: false, true (= default) or one of torch.compile's modes
# (https://pytorch.org/docs/stable/generated/torch.compile.html)
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
MIL_SOURCES = ("none", "series", "study", "views", "tiles")  # mil.source: what a row's many images are
MIL_POOLS = ("mean", "max", "attention", "gru", "transformer")  # mil.pool (comp.models.mil)


@dataclass
class DataConfig:
    root: str = "data/demo"  # where the competition download lives (relative to the repo, or absolute)
    competition: str = ""  # Kaggle slug, for `kaggle competitions download/submit`
    source: str = "competition"  # how prepare.py downloads: competition | dataset | demo
    dataset: str = ""  # Kaggle dataset slug (owner/name) when source=dataset
    layout: str = "csv"  # csv: a label CSV + an image folder; folders: one sub-folder per class; siim_covid:
    # SIIM-COVID19's studies (train_csv: the study labels, train_image_level.csv its images; comp.predict.siim_covid);
    # visits: rows per group and time, no image (OSIC: Patient x Weeks; fitted by scripts/tabular.py, comp.data.visits)
    train_csv: str = "train.csv"  # csv layout: the labels file, relative to root
    test_csv: str = ""  # CSV listing the test ids (any layout); empty = the sample submission's ids, or
    # with neither, every image under test_images (in class sub-folders: a labelled held-out set)
    sample_submission: str = "sample_submission.csv"  # relative to root; empty when there is none
    id_column: str = "id"  # column of the image id in the CSVs
    test_id_column: str = ""  # column of the image id in data.test_csv when it differs (RSNA Bone Age's "Case ID");
    # empty = data.id_column. The submission's id column stays data.id_column
    label_column: str = "label"  # column of the label in train_csv (and the submission)
    label_columns: list[str] = field(default_factory=list)  # several target columns of train_csv, in the
    # submission's order: task=multilabel (one 0/1 column per label), or task=multiclass soft targets (vote
    # counts or shares per class, normalised per row); empty = data.label_column
    heads: Any = field(default_factory=dict)  # task=multihead: each target's classes in output order, e.g.
    # {bowel: [healthy, injury], kidney: [healthy, low, high]}; train_csv holds a column <target> with each row's
    # class (its name, or spelt so it slugs to it: "Normal/Mild" -> normal_mild; blank = not labelled) or one 0/1
    # column <target>_<class> per class (RSNA 2023). Outputs and submission columns `<target>_<class>`
    group_column: str = ""  # column of train_csv naming the patient / lesion / study: folds keep it whole
    # (instead of data.group_pattern)
    submission_id_column: str = ""  # column of the test CSV / sample naming the submission row when it groups
    # several images (RSNA Mammography: prediction_id); images are aggregated into it (predict.aggregate)
    submission_id_parts: list[str] = field(default_factory=list)  # columns whose values joined by "_" make
    # data.submission_id_column where a CSV lacks it (RSNA Mammography's train.csv: [patient_id, laterality])
    train_images: list[str] = field(default_factory=lambda: ["train"])  # folders (globs, `**` ok) of training
    # images; a doubly-unzipped copy and __MACOSX/ debris are skipped. An HDF5 file (.h5/.hdf5) here is an image
    # store: each image's encoded bytes under its id (ISIC 2024's train-image.hdf5; docs/images.md)
    test_images: list[str] = field(default_factory=lambda: ["test"])  # folders (globs) of test images, or HDF5
    # image stores (test-image.hdf5)
    image_ext: str = ".png"  # extension appended to a CSV id to find its file (unless the id ends with it)
    file_column: str = ""  # column of the CSVs naming the file a row reads when it is not the id (HMS 2024:
    # spectrogram_id; files `<value><image_ext>`); empty = the id. train_csv must have it; a test CSV without
    # it reads the id
    offset_column: str = ""  # column of the CSVs giving the second a row's window starts at in its recording
    # (HMS 2024: spectrogram_label_offset_seconds; a 600 s window, comp/data/spectrogram.py), or for a NIfTI
    # volume the axial slice it reads (comp/data/nifti.py); train_csv must have it, a test CSV without it (HMS's
    # test.csv) reads from 0. docs/images.md
    classes: list[str] = field(default_factory=list)  # class names in label order; empty = sorted labels
    class_values: list[str] = field(default_factory=list)  # the competition's value of each class (same order
    # as classes) in its CSVs and submission, e.g. classes [hem, all] + class_values [0, 1]; empty = the names
    tabular_columns: list[str] = field(default_factory=list)  # columns of train_csv and test_csv (age, sex,
    # anatomic site...) that scripts/stack.py adds to the image models' outputs, or (data.layout=visits) features of
    # each row taken from its group's baseline; non-numeric ones are categorical
    time_column: str = ""  # data.layout=visits: the column of train_csv and test_csv giving a row's time (OSIC:
    # Weeks); each group's earliest row is its baseline, the model reads the time since it; the sample's ids are
    # `<group>_<time>`
    baseline_columns: list[str] = field(default_factory=list)  # data.layout=visits: numeric columns whose value
    # at the group's baseline is a feature of every row of the group (OSIC: [FVC, Percent])
    group_pattern: str = ""  # regex on the image id; its first group is the patient (folds keep it whole)
    positive_class: str = ""  # two classes: the positive one (a class name or value), whose probability an AUC
    # submission holds; empty = the class whose value is 1 / "1" / True-like, else the second class in order
    group_unmatched: str = "error"  # an id group_pattern does not match: error (refused, naming a few) | own
    # (the image is a patient of its own)
    download: bool = False  # prepare.py downloads a missing data.root from Kaggle (else: --download)
    limit: int = 0  # smoke mode: N training images per class (and N x classes test images); 0 = all
    dedupe_ids: bool = False  # csv layout: an id on several rows (one per box, RSNA Pneumonia) is one image, its
    # rows' labels must agree (else an error naming the id); false = a repeated id is an error (unless
    # data.label_rows joins them)
    label_rows: str = "refuse"  # csv layout, an id on several rows with different labels (HMS 2024: one row per
    # window, each with its votes): refuse (an error naming the id) | first (the first row's) | aggregate (one
    # class label: the majority, ties to the earliest row; vote columns: summed then normalised; multi-label 0/1:
    # the maximum; regression: the mean). first and aggregate imply data.dedupe_ids; the choice and the counts
    # are kept in folds.json (several_rows). docs/tasks.md
    solution_csv: str = ""  # held-out labels to score a submission locally, if known: train_csv's form (id_column
    # and label_column, or data.label_columns / data.heads' columns), also for a long sample (RSNA 2022)
    exclude: Any = field(default_factory=list)  # training image ids to drop (suspected label errors, duplicates):
    # a list of ids, or a path to a CSV with an id column (e.g. scripts/explain.py's label_issues.csv); test
    # images are never dropped. Part of the folds' meaning: a folds.csv made without it is refused
    duplicates: str = ""  # a CSV of image pairs that are copies (scripts/explain.py's duplicates.csv, reviewed; or
    # any CSV with id_a, id_b): two training images are kept in one fold, a data.extra image paired with a training
    # image (set extra:<name>) is left out. Identical training images are joined without it. Part of the folds'
    # meaning, as data.exclude
    code_competition: bool = False  # Kaggle takes no CSV upload, only a notebook's output (submit.py --notebook)
    kernel_gpu: bool = False  # the submission notebook runs with a GPU (code competitions)
    hidden_test_size: int = 0  # images in the hidden test set a code competition's notebook predicts; 0 = unknown
    runtime_limit_hours: float = 9.0  # the competition's notebook run-time limit (9 h for most)
    inference_server: str = ""  # a served code competition (RSNA 2025: Kaggle's gateway calls the notebook's
    # predict() per test item and writes submission.parquet): the competition's server class as module.Class,
    # e.g. kaggle_evaluation.rsna_inference_server.RSNAInferenceServer; the notebook serves the package's
    # serve.py with it. "" = the notebook writes submission.csv with infer.py (docs/code-competitions.md)
    extra: list[Any] = field(default_factory=list)  # external training data: other downloads, each a partial data
    # section (root, layout, train_csv, id_column, label_column, train_images, image_ext, ...) plus name,
    # label_map {from: to}, weight (sampling share, competition images 1) and stage (all | pretrain); added to
    # the training part of every fold, never to validation, folds.csv or OOF (comp.data.extra)
    extra_only: bool = False  # train on data.extra only (a pre-training stage); validation stays the fold's own
    demo_external: float = 0.0  # data.source=demo: this share of the training digits goes to external/ without
    # labels (their answers in external_solution.csv), an unlabelled pool for pseudo-labels; 0 = none
    pseudo: str = ""  # a pseudo-label CSV made by scripts/pseudo.py (with its .json record): its rows join the
    # training part of every fold, never a validation part (comp.teacher); empty = none


@dataclass
class FoldsConfig:
    n_folds: int = 5  # K of the K-fold split; folds.csv is written once and reused
    grouped: bool = True  # StratifiedGroupKFold when data.group_pattern is set
    seed: int = 42  # seed of the split, apart from `seed` so a seed ensemble trains on the same folds


@dataclass
class ModelConfig:
    name: str = "resnet18"  # kit ResNet (resnet18..resnet152) or any timm model as timm/<name>
    pretrained: str | None = None  # local .pth/.safetensors file, or a timm pretrained tag
    in_chans: int = 3  # 1 for grayscale input (a pretrained first conv is summed over colour)
    drop_rate: float = 0.0  # dropout before the classifier
    head: str = "auto"  # task=ordinal: softmax (one logit per grade) | regression (one output on the grade,
    # cut into grades at points tuned on OOF); auto = softmax; other tasks have their own head
    freeze_epochs: int = 0  # epochs training only the head before unfreezing the backbone
    backbone_lr_mult: float = 1.0  # backbone learning rate = lr * this (comp.train.optim: every step)


@dataclass
class OptimConfig:
    name: str = "adamw"  # adamw | sgd
    lr: float = 1e-3  # peak learning rate, reached after the warmup
    weight_decay: float = 0.05  # weight decay (decoupled in AdamW); biases and norm weights get none
    momentum: float = 0.9  # SGD only
    schedule: str = "cosine"  # cosine | onecycle | constant, stepped every optimizer step
    warmup_epochs: float = 1.0  # linear warmup from lr/100
    min_lr: float = 1e-6  # the learning rate the cosine and one-cycle schedules end at


@dataclass
class TrainConfig:
    amp: bool = True  # mixed precision on CUDA: bf16 where supported, fp16 + GradScaler otherwise
    channels_last: bool = True  # NHWC memory format for the model and its batches
    compile: Any = False  # torch.compile the model: false | true (= default) | default | reduce-overhead (CUDA
    # graphs) | max-autotune | max-autotune-no-cudagraphs (COMPILE_MODES; comp.device.compile_model)
    accum_steps: int = 1  # gradient accumulation: micro-batches per optimizer step
    clip_grad: float = 0.0  # max gradient norm; 0 = off
    label_smoothing: float = 0.0  # cross-entropy towards uniform, BCE towards 0.5; 0 = off
    loss: str = "auto"  # regression head: mse | smooth_l1 | l1 on standardised targets; auto = smooth_l1 for
    # ordinal, mse for regression (classification losses follow the task: cross-entropy or BCE); task=regression:
    # laplace | gaussian_nll, a value with its uncertainty (2 outputs, value and sigma; the negative
    # log-likelihood; averaged as a mixture: comp.likelihood)
    ema: bool = False  # keep an exponential moving average of the weights (validated, checkpointed)
    ema_decay: float = 0.999  # EMA decay per optimizer step
    ema_warmup: bool = True  # EMA decay ramps up over the first steps (timm's), so a short run's EMA is usable
    swa_epochs: int = 0  # average the weights of the last N epochs (SWA-style, BatchNorm statistics recomputed;
    # comp.train.swa), validated as a row of its own and saved as best.pt when it scores best; 0 = off
    mixup: float = 0.0  # mixup alpha; 0 = off
    cutmix: float = 0.0  # cutmix alpha; 0 = off
    class_weights: bool = False  # weight the loss by inverse class frequency (sigmoid heads: BCE pos_weight =
    # negatives / positives per label; task=multihead: per head)
    head_weights: Any = field(default_factory=dict)  # task=multihead: {target: weight} of each head's cross-entropy
    # in the summed loss; a target left out weighs 1
    sampler: str = "random"  # random | weighted (inverse class frequency sampling)
    early_stop: int = 0  # stop after this many epochs without improvement; 0 = off
    recovery_every: int = 50  # save a recovery checkpoint every N optimizer steps; 0 = off
    log_every: int = 10  # steps between loss read-backs (a device sync): progress bar, non-finite check
    tracker: str = "tensorboard"  # none | tensorboard | mlflow | wandb: where step and epoch scalars also go
    # (comp.train.tracking); TensorBoard event files in <out_dir>/fold<K>/tb/ (always, unless none)
    tracker_uri: str = ""  # MLflow tracking URI; empty = the local SQLite store <out_dir>/mlflow.db (nothing is sent)
    tracker_project: str = ""  # MLflow experiment / W&B project name; empty = the name of out_dir's folder


@dataclass
class ImagesConfig:
    preprocess: list[str] = field(default_factory=list)  # crop_black, crop_circle, crop_border, ben_graham, clahe,
    # equalize, grayscale: crops run on the decoded image, the rest in list order after the resize
    # (comp.data.preprocess)
    cache: bool = True  # prepare.py writes every image once, preprocessed and resized; training reads it
    cache_dir: str = ""  # the cache's parent folder; empty = <parent of data.root>/cache (set it when data.root
    # is read-only, e.g. /kaggle/working/cache); each setting gets its own <root name>-<size>px-<hash> folder
    cache_format: str = "npy"  # npy: raw arrays, fastest to read | png: lossless, ~3x smaller on disk
    dicom_windows: list[Any] = field(default_factory=list)  # DICOM grey levels, one channel per window (1 or
    # 3): names (brain, subdural, bone, ... comp.data.dicom's WINDOWS; file = the file's own) or [center, width];
    # empty = the file's own VOI LUT or window, else its full range. NIfTI slices take the same (file or empty:
    # the slice's min to max; docs/images.md)
    dicom_frame: str = "error"  # multi-frame DICOM: first | middle | error (an error naming the file and its frames)


@dataclass
class AugConfig:
    train: list[Any] = field(default_factory=list)  # albumentations transforms: {name: ..., args...}
    valid: list[Any] = field(default_factory=list)  # transforms for validation and test images, as aug.train
    tta: list[str] = field(default_factory=lambda: ["identity", "hflip"])  # views averaged at predict: identity,
    # hflip, vflip, hvflip, rot90, rot270, transpose (exact flips and rotations of the batch on the device)


@dataclass
class PredictConfig:
    aggregate: str = "mean"  # mean | max: how the images of one submission row (data.submission_id_column)
    # are combined; OOF scores are computed at the same level
    ensemble: str = "mean_prob"  # mean_prob | mean_logit: average probabilities, or logits then softmax
    fold_weights: str = "equal"  # equal | cv: weight each fold by its best validation score (best.pt), by its
    # inverse where lower is better (mae, rmse, log_loss)
    thresholds: bool = True  # decode with what is tuned on the OOF: metric=qwk, cut-points on the expected grade;
    # task=binary with metric f1 or pf1, a decision threshold; each kept only when its cross-fitted gain is positive
    output: str = "auto"  # auto | label | prob: labels, or probabilities (auto: per-class sample columns, or auc)
    shape: str = "wide"  # wide | long: one sample row per id with a column per label (wide), or one row per id x
    # label of data.label_columns, `<id><long_separator><label>` in the sample's first column and its one value
    # in the second (long: RSNA 2022 `row_id,fractured` with rows `1.2.826..._C1`, `..._patient_overall`)
    long_separator: str = "_"  # predict.shape=long: what joins the id and the label in a row id
    submissions_dir: str = "submissions"  # scripts/submit.py keeps each submitted CSV and index.csv here
    folds: list[int] = field(default_factory=list)  # the folds to ensemble, e.g. [0, 2]; empty = every fold
    # of folds.n_folds, each of which must be trained (a partial ensemble only when asked for by name)
    compile: Any = False  # torch.compile each fold's model for prediction: the values of train.compile
    on_bad_image: str = "fail"  # fail | prior: a test image that cannot be read stops predict (exit 2 naming it),
    # or its row gets the training labels' class prior with a warning (the offline package's default)


@dataclass
class DistillConfig:
    teacher: Any = ""  # knowledge distillation: the teacher experiment's out_dir, or a list of them (a mean-logit
    # blend); student fold K learns from teacher fold K's model only (comp.teacher.distill); empty = off
    alpha: float = 0.5  # weight of the hard-label loss; 1 - alpha goes to the teacher's soft targets
    temperature: float = 2.0  # softmax/sigmoid temperature T of the soft targets (the soft loss is scaled by T^2)


@dataclass
class MilConfig:
    source: str = "none"  # multiple-instance rows (docs/mil.md): none (one image per row) | series (the row's folder
    # holds one DICOM series: RSNA 2022) | study (series sub-folders: the brain tumour's FLAIR/T1w/T1wCE/T2w, RSNA
    # 2023) | views (CSV rows of images joined by mil.join: a breast's CC and MLO) | tiles (one large image per row
    # cut into tiles: UBC-OCEAN)
    folder: str = "{id}"  # series/study: the row's folder under data.train_images / data.test_images, a Python
    # format of the row's columns ("{id}" the id column, "{BraTS21ID:05d}" zero-padded)
    series: list[str] = field(default_factory=list)  # study: the series read, matched to sub-folder names or
    # SeriesDescription (FLAIR, T1w, T1wCE, T2w), in this order; empty = every series sub-folder in name order
    series_csv: list[str] = field(default_factory=list)  # study: CSVs under data.root with columns series_id,
    # series_description naming each series folder (RSNA 2024's train_ and test_series_descriptions.csv), read
    # before the DICOM's own SeriesDescription
    join: list[str] = field(default_factory=list)  # views: columns of the CSVs whose values joined by "_" name the
    # row ([patient_id, laterality] -> 10006_L, RSNA Mammography's prediction_id)
    instances: int = 16  # instances per series (views and tiles: per row); validation and test take them evenly
    # spaced, training jittered within each stretch (seeded per sample)
    slices: int = 1  # adjacent slices per instance as its 3 channels: 1 (a slice's window channels) | 3 (2.5D)
    order: str = "position"  # slice order: position (ImagePositionPatient on the normal of
    # ImageOrientationPatient; InstanceNumber for slices without them) | instance (InstanceNumber) | name
    tile_size: int = 256  # tiles: a tile's side in source pixels, resized to image_size
    tissue: float = 0.25  # tiles: the least share of tissue (not white or black background) a tile must hold
    max_tiles: int = 64  # tiles: tiles cached per image, those with the most tissue
    augment: str = "row"  # row: one augmentation draw per row, the same on every instance | instance: one each
    pool: str = "attention"  # instance features to the row's: mean | max | attention (gated, Ilse et al. 2018)
    # | gru | transformer (over slice order)
    aux_weight: float = 0.0  # weight of the instance-level auxiliary loss (the head on each instance's features
    # against the row's target); 0 = off


@dataclass
class Config:
    seed: int = 42  # seeds the sample order, augmentation and initial weights (the split has folds.seed)
    seeds: list[int] = field(default_factory=list)  # a seed bag: the recipe trained once per seed on the same
    # folds, into <out_dir>/fold<K>/seed<S>/, predicted and scored as one experiment; empty = just `seed`
    out_dir: str = "runs/demo"  # where fold folders, folds.csv and predictions go
    stages: list[Any] = field(default_factory=list)  # a multi-stage recipe: partial configs trained in order, each
    # from the previous stage's best.pt (model.pretrained); earlier stages in <out_dir>/fold<K>/stage<i>/, the
    # last in <out_dir>/fold<K>/ where predict reads it (comp.train.stages); empty = one stage
    stage: int = 0  # set by scripts/train_fold.py for each of `stages`: i >= 1 a stage before the last (its folder
    # fold<K>/stage<i>/, data.extra entries with stage=pretrain used); 0 = the last stage, or no stages
    epochs: int = 10  # training epochs per fold
    batch_size: int = 64  # images per optimizer micro-step (per process under torchrun)
    image_size: int = 32  # square side the images are resized to
    num_workers: int = 2  # DataLoader worker processes
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    task: str = "multiclass"  # multiclass | binary | multilabel | ordinal | regression | multihead (comp.tasks)
    metric: str = "accuracy"  # the competition metric (comp.metrics METRICS: accuracy, balanced_accuracy,
    # f1_macro, f1_weighted, f1, f1_macro_labels, qwk, auc, pauc, pf1, log_loss, kl_divergence, rmse, mae, r2,
    # rsna2022_cervical, rsna2023_trauma, rsna2024_lumbar; laplace_log_likelihood: OSIC's, of a value with its
    # sigma)
    pauc_min_tpr: float = 0.8  # metric=pauc: the partial AUC above this true-positive rate (ISIC 2024: 0.8)
    data: DataConfig = field(default_factory=DataConfig)
    folds: FoldsConfig = field(default_factory=FoldsConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    images: ImagesConfig = field(default_factory=ImagesConfig)
    aug: AugConfig = field(default_factory=AugConfig)
    predict: PredictConfig = field(default_factory=PredictConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    mil: MilConfig = field(default_factory=MilConfig)
