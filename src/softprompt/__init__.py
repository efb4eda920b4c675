"""softprompt: soft prompts and LoRA for vision-language and text models on a frozen backbone."""

__version__ = "0.1.0"

import logging as _logging

# bitsandbytes (imported by peft) warns on import that an optional kernel package is
# missing, then uses its built-in CPU kernels; users only need to hear about real problems.
_logging.getLogger("bitsandbytes").setLevel(_logging.ERROR)
