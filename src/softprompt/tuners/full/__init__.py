"""Full fine-tuning of the language model: the baseline every other method is measured against."""
