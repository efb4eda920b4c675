"""The registration of the linear probe: not trained by `softprompt train` (scikit-learn
fits it in `softprompt linear-probe`), so it has no `method` section; its adapters load
for `predict`, `eval` and `serve`."""

from __future__ import annotations

from softprompt.tuners.spec import TunerSpec

SPEC = TunerSpec(
    name="linear_probe",
    order=82,
    module="softprompt.tuners.linear_probe.tuner",
    adapter="linear_probe",
    saved=("linear_probe",),
    families=("clip",),
)
