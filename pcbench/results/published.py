"""Published CIFAR-100 top-1 accuracies (METHODS.md section 5), shown beside measured results
with their own scoring rule, never ranked with them."""

# CRD README, last epoch, (teacher, student) -> {method: accuracy %}; "teacher" and "student"
# are the two networks trained alone.
_CRD_LAST_EPOCH = {
    ("wrn_40_2", "wrn_16_2"): dict(teacher=75.61, student=73.26, kd=74.92, fitnet=73.58, at=74.08,
                                   sp=73.83, rkd=73.35, pkt=74.54, crd=75.48),
    ("resnet56", "resnet20"): dict(teacher=72.34, student=69.06, kd=70.66, fitnet=69.21, at=70.55,
                                   sp=69.67, rkd=69.61, pkt=70.34, crd=71.16),
    ("resnet32x4", "resnet8x4"): dict(teacher=79.42, student=72.50, kd=73.33, fitnet=73.50, at=73.44,
                                      sp=72.94, rkd=71.90, pkt=73.64, crd=75.51),
    ("vgg13", "vgg8"): dict(teacher=74.64, student=70.36, kd=72.98, fitnet=71.02, at=71.43,
                            sp=72.68, rkd=71.48, pkt=72.88, crd=73.94),
}
LAST_EPOCH_RULE = "last epoch (CRD README)"
BEST_EPOCH_RULE = "best test epoch (FCFD paper)"


def published(dataset: str, teacher: str, student: str, method: str) -> tuple[float, str] | None:
    """(top-1 %, its scoring rule), or None where nothing was published."""
    if dataset != "cifar100":
        return None
    if method == "fcfd" and (teacher, student) == ("resnet32x4", "resnet8x4"):
        return 76.62, BEST_EPOCH_RULE
    name = "student" if method == "ce" else method
    value = _CRD_LAST_EPOCH.get((teacher, student), {}).get(name)
    return (value, LAST_EPOCH_RULE) if value is not None else None
