"""manytask: train and serve many NLU tasks on one shared encoder (BAM!, flexible multi-task serving, MeTaL).

The public API (``manytask.api``, listed in ``__all__``): ``train`` and ``Run``, ``Model``, ``Bundle``,
``Scores``, ``Prediction``; studies (``bam``, ``flex_pipeline``, ``write_report``); MeTaL (``ensemble``,
``ensemble_members``, ``weak``); serving (``serve``, ``app``); data (``load_config``, ``task_data``, ``flex_config``,
``glue_files``); and
``ManytaskError``, the base of every error a user can cause. They are loaded on first use, so importing one part
of the package does not import them all.
"""

# names that are not also submodules (``manytask.config`` and ``manytask.flex`` are packages' own modules)
__all__ = ["Bundle", "ManytaskError", "Model", "Prediction", "Run", "Scores", "app", "bam", "cpu_info", "encoder_path",
           "ensemble", "ensemble_members", "export_model", "flex_config", "flex_pipeline", "glue_files", "load_config", "open_run",
           "serve", "task_data", "train", "weak", "write_report"]


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
