"""Where training runs: alone in this process, or as the ranks of a Ray Train group.

``context.TrainContext`` is what a training loop receives; ``ray_train.fit_on_ray`` is the one
Ray Train driver of every experiment; ``config.RayTrainConfig`` is the ``ray:`` section of a
training job; ``threads.torch_threads`` keeps the memory steps on one thread.
"""
