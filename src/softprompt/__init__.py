"""softprompt: soft prompts and LoRA for vision-language and text models on a frozen backbone."""

__version__ = "0.1.0"
