"""manytask: train and serve many NLU tasks on one shared encoder (BAM!, flexible multi-task serving, MeTaL).

The public API (``manytask.api``, listed in ``__all__``): ``train`` and ``Run``, ``Model``, ``Bundle``,
``Scores``, ``Prediction``; studies (``bam``, ``flex``, ``report``); MeTaL (``ensemble``, ``ensemble_members``,
``weak``); serving (``serve``, ``app``); data (``config``, ``task_data``, ``flex_config``, ``glue_files``); and
``ManytaskError``, the base of every error a user can cause. They are loaded on first use, so importing one part
of the package does not import them all.
"""

__all__ = ["Bundle", "ManytaskError", "Model", "Prediction", "Run", "Scores", "app", "bam", "config", "cpu_info",
           "encoder_path", "ensemble", "ensemble_members", "flex", "flex_config", "glue_files", "open_run", "report",
           "serve", "task_data", "train", "weak"]


def __getattr__(name: str):
    if name == "ManytaskError":
        from manytask.errors import ManytaskError

        return ManytaskError
    if name in __all__:
        from manytask import api

        return getattr(api, name)
    raise AttributeError(f"module 'manytask' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
