"""The training engine: distributed start-up, model factory, DeepSpeed config, optimizers,
schedules, loop helpers, metrics and checkpoint engines. `arctic_core.trainer.Trainer` uses
these; methods reach them through the trainer's hooks. Importing this package is light;
each module imports torch/DeepSpeed/transformers itself.
"""
