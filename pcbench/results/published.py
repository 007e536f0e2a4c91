"""Published top-1 accuracies, shown beside measured results with their own source and
protocol, never ranked with them, and only beside a table of the same protocol (its training
length). Every number here was read in the source it names; numbers whose source could not be
checked are left out."""

from typing import NamedTuple


class Source(NamedTuple):
    label: str  # short name for notes
    where: str  # repository and file the numbers were read in
    selection: str  # which epoch's number the source reports, and where that is said
    selected_on_test: bool  # the source chose its epoch by test accuracy
    epochs: int  # the source's training length on this data set
    recipe: str  # pcbench's name for the source's training recipe (recipes.py)


class Published(NamedTuple):
    accuracy: float  # top-1, %
    source: Source
    epochs: int  # this number's training length (the source's, or longer where a method adds a stage)


_REPDISTILLER = Source("RepDistiller", "HobbitLong/RepDistiller, README.md (CIFAR-100 table)",
                       "last epoch (train_student.py comments that the reported results are from "
                       "the last epoch)", False, 240, "cifar100-crd")
# Read in megvii-research/mdistiller README.md: the DKD table "On CIFAR-100" (DKD 71.97
# resnet56->resnet20, 76.32 resnet32x4->resnet8x4, 76.23 wrn_40_2->wrn_16_2, 74.68 vgg13->vgg8)
# and "On ImageNet" (ResNet34->ResNet18: KD 71.03, DKD 71.70). The README gives no teacher
# accuracies, so none is kept for its tables.
_MDISTILLER_CIFAR = Source("mdistiller", "megvii-research/mdistiller, README.md (CIFAR-100 table)",
                           "best test epoch (mdistiller's trainer keeps the best test accuracy)",
                           True, 240, "cifar100-crd")
_MDISTILLER_IMAGENET = Source("mdistiller", "megvii-research/mdistiller, README.md (ImageNet table)",
                              _MDISTILLER_CIFAR.selection, True, 100, "imagenet")
# Read in JiamingLv/WKD README.md (its CIFAR-100 and ImageNet tables; WKD-L / WKD-F: 76.53 /
# 76.77 resnet32x4->resnet8x4, 72.49 / 72.50 ResNet34->ResNet18). The README does not say how a
# number was chosen; its trainer (mdistiller's) keeps the best test epoch.
_WKD_CIFAR = Source("WKD", "JiamingLv/WKD, README.md (CIFAR-100 table)",
                    "best test epoch (its mdistiller trainer keeps the best test accuracy; the README "
                    "does not say)", True, 240, "cifar100-crd")
_WKD_IMAGENET = Source("WKD", "JiamingLv/WKD, README.md (ImageNet table)", _WKD_CIFAR.selection, True, 100,
                       "imagenet")
# Read in dvlab-research/ReviewKD ImageNet/README.md (ResNet34->ResNet18: 71.61). Its own recipe
# (100 epochs, cosine with a 5-epoch warm-up, AMP), which no pcbench recipe reproduces: shown
# beside no table, kept for `published_elsewhere`.
_REVIEWKD_IMAGENET = Source("ReviewKD", "dvlab-research/ReviewKD, ImageNet/README.md",
                            "best test epoch (its trainer saves best_prec1; the README does not say)",
                            True, 100, "reviewkd-imagenet")
# Read in each method's authors' README, CIFAR-100 table. None says how its number was chosen;
# each trainer keeps the best test epoch (DIST's "±" implies several runs, counts unstated).
_DIST = Source("DIST", "hunto/DIST_KD, README.md (CIFAR-100 table)",
               "best test epoch (its trainer keeps the best checkpoint; the README does not say)",
               True, 240, "cifar100-crd")
_WTTM = Source("WTTM", "zkxufo/TTM, README.md (CIFAR-100 table 1)",
               "best test epoch (train_student.py logs best_acc; the README does not say)", True, 240,
               "cifar100-crd")
_LS = Source("LS", "sunshangquan/logit-standardization-KD, README.md (table 1, KD/DKD/CTKD + Ours)",
             "best test epoch, averaged over runs (its logs end with best_acc; the README says its "
             "numbers are averages)", True, 240, "cifar100-crd")
# LS's MLKD runs: its configs/cifar100/mlkd/*.yaml train 480 epochs (MLKD's own, 240), with KD
# weight 9 (6 for vgg13 -> vgg8, by its log's name) and base temperature 2.
_LS_MLKD = Source("LS", "sunshangquan/logit-standardization-KD, README.md (table 1, MLKD+Ours)",
                  _LS.selection, True, 480, "cifar100-crd")
# The MLKD paper's own numbers, as LS's README quotes them in the same table (MLKD's repository
# publishes none): its trainer (mdistiller's) keeps the best test epoch.
_MLKD = Source("MLKD", "sunshangquan/logit-standardization-KD, README.md (table 1, MLKD row, the MLKD "
               "paper's numbers)", "best test epoch (MLKD's mdistiller trainer keeps the best test accuracy)",
               True, 240, "cifar100-crd")
_CTKD = Source("CTKD", "zhengli97/CTKD, README.md (Main Results)",
               "best test epoch (train_student.py keeps best_acc; the README does not say)", True, 240,
               "cifar100-crd")

# RepDistiller's train_student.py runs init() for --init_epochs (default 30) before the usual
# 240 epochs when it distils with abound, factor or fsp (pcbench's ab, ft, fsp).
_LONGER = {_REPDISTILLER: {"ab": 270, "ft": 270, "fsp": 270}}

# source -> (dataset, teacher, student) -> {method: accuracy}; "teacher" and "student" are the
# two networks trained alone (pcbench's `ce` is the student alone).
_TABLES = {
    _REPDISTILLER: {
        ("cifar100", "wrn_40_2", "wrn_16_2"): dict(teacher=75.61, ce=73.26, kd=74.92, fitnet=73.58,
                                                   at=74.08, sp=73.83, cc=73.56, vid=74.11, rkd=73.35,
                                                   pkt=74.54, nst=73.68, crd=75.48,
                                                   ab=72.50, ft=73.25, fsp=72.91),
        ("cifar100", "resnet56", "resnet20"): dict(teacher=72.34, ce=69.06, kd=70.66, fitnet=69.21,
                                                   at=70.55, sp=69.67, cc=69.63, vid=70.38, rkd=69.61,
                                                   pkt=70.34, nst=69.60, crd=71.16,
                                                   ab=69.47, ft=69.84, fsp=69.95),
        ("cifar100", "resnet32x4", "resnet8x4"): dict(teacher=79.42, ce=72.50, kd=73.33, fitnet=73.50,
                                                      at=73.44, sp=72.94, cc=72.97, vid=73.09,
                                                      rkd=71.90, pkt=73.64, nst=73.30, crd=75.51,
                                                      ab=73.17, ft=72.86, fsp=72.62),
        ("cifar100", "vgg13", "vgg8"): dict(teacher=74.64, ce=70.36, kd=72.98, fitnet=71.02, at=71.43,
                                            sp=72.68, cc=70.71, vid=71.23, rkd=71.48, pkt=72.88,
                                            nst=71.53, crd=73.94,
                                            ab=70.94, ft=70.58, fsp=70.23),
    },
    _MDISTILLER_CIFAR: {
        ("cifar100", "wrn_40_2", "wrn_16_2"): dict(dkd=76.23),
        ("cifar100", "resnet56", "resnet20"): dict(dkd=71.97),
        ("cifar100", "resnet32x4", "resnet8x4"): dict(dkd=76.32),
        ("cifar100", "vgg13", "vgg8"): dict(dkd=74.68),
    },
    _MDISTILLER_IMAGENET: {
        ("imagenet", "resnet34", "resnet18"): dict(kd=71.03, dkd=71.70),
    },
    _DIST: {
        ("cifar100", "resnet56", "resnet20"): dict(dist=71.75),
        ("cifar100", "resnet32x4", "resnet8x4"): dict(dist=76.31),
    },
    _WTTM: {
        ("cifar100", "wrn_40_2", "wrn_16_2"): dict(wttm=76.37),
        ("cifar100", "resnet56", "resnet20"): dict(wttm=71.92),
        ("cifar100", "resnet32x4", "resnet8x4"): dict(wttm=76.06),
        ("cifar100", "vgg13", "vgg8"): dict(wttm=74.44),
    },
    _LS: {  # kd+ls is LS's "KD+Ours", dkd+ls "DKD+Ours", kd+ls+ctkd "CTKD+Ours"
        ("cifar100", "resnet32x4", "resnet8x4"): {"kd+ls": 76.62, "dkd+ls": 77.01, "kd+ls+ctkd": 76.67},
        ("cifar100", "vgg13", "vgg8"): {"kd+ls": 74.36, "dkd+ls": 74.81, "kd+ls+ctkd": 74.47},
        ("cifar100", "wrn_40_2", "wrn_16_2"): {"kd+ls": 76.11, "dkd+ls": 76.39, "kd+ls+ctkd": 76.08},
        ("cifar100", "resnet56", "resnet20"): {"kd+ls": 71.43, "dkd+ls": 72.32, "kd+ls+ctkd": 71.34},
    },
    _LS_MLKD: {  # "MLKD+Ours", trained 480 epochs: never beside a 240-epoch table
        ("cifar100", "resnet32x4", "resnet8x4"): {"mlkd+ls": 78.28},
        ("cifar100", "vgg13", "vgg8"): {"mlkd+ls": 75.22},
        ("cifar100", "wrn_40_2", "wrn_16_2"): {"mlkd+ls": 76.95},
        ("cifar100", "resnet56", "resnet20"): {"mlkd+ls": 72.33},
    },
    _MLKD: {
        ("cifar100", "resnet32x4", "resnet8x4"): dict(mlkd=77.08),
        ("cifar100", "vgg13", "vgg8"): dict(mlkd=75.18),
        ("cifar100", "wrn_40_2", "wrn_16_2"): dict(mlkd=76.63),
        ("cifar100", "resnet56", "resnet20"): dict(mlkd=72.19),
    },
    _CTKD: {
        ("cifar100", "resnet56", "resnet20"): {"kd+ctkd": 71.19},
        ("cifar100", "wrn_40_2", "wrn_16_2"): {"kd+ctkd": 75.45},
        ("cifar100", "vgg13", "vgg8"): {"kd+ctkd": 73.52},
    },
    _WKD_CIFAR: {
        ("cifar100", "resnet32x4", "resnet8x4"): dict(wkd_l=76.53, wkd_f=76.77),
    },
    _WKD_IMAGENET: {
        ("imagenet", "resnet34", "resnet18"): dict(wkd_l=72.49, wkd_f=72.50),
    },
    _REVIEWKD_IMAGENET: {
        ("imagenet", "resnet34", "resnet18"): dict(reviewkd=71.61),
    },
}


def published(dataset: str, teacher: str, student: str, method: str) -> Published | None:
    """The published number for this pair and method, whatever its protocol, or None where none
    was checked. A feature method with the KD term added ("pc+kd") was published by nobody;
    the logit plug-ins' papers published theirs (kd+ls, dkd+ls, kd+ctkd, ...)."""
    for source, table in _TABLES.items():
        value = table.get((dataset, teacher, student), {}).get(method)
        if value is not None:
            return Published(value, source, _LONGER.get(source, {}).get(method, source.epochs))
    return None


def published_teacher(source: Source, dataset: str, teacher: str, student: str) -> float | None:
    """The teacher's accuracy (%) in `source`'s table for this pair, where it gives one."""
    return _TABLES[source].get((dataset, teacher, student), {}).get("teacher")
