"""A tqdm progress bar driven by the fitting loop's per-sweep callback.

The loop only knows ``callback(restart, sweep, elbo)`` and ``phase(restart, name)``; this turns
them into one bar per restart (sweeps out of ``max_iter``, the current ELBO as postfix, and the
name of a costly move while it runs: the group search can take longer than many sweeps).  A
restart that converges early simply ends its bar short.  Always use it as a context manager
so the bar closes even when the fit is interrupted.
"""

from __future__ import annotations

__all__ = ["FitProgress"]


class FitProgress:
    """Callable ``(restart, sweep, elbo)`` that draws a bar per restart; also prints each sweep
    when ``print_sweeps``."""

    def __init__(self, n_init: int, max_iter: int, enabled: bool = True,
                 print_sweeps: bool = False, file=None, delay: float = 0.0):
        self.n_init = n_init
        self.max_iter = max_iter
        self.enabled = enabled
        self.print_sweeps = print_sweeps
        self.file = file
        self.delay = float(delay)   # seconds a restart runs before its bar appears (tqdm)
        self._bar = None
        self._restart = None
        self._elbo = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def close(self):
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __call__(self, restart: int, sweep: int, value: float) -> None:
        if self.print_sweeps:
            # Restarts numbered from 1 as on the bar; written through tqdm so a line and an
            # open bar do not interleave.
            line = (f"[nestedatoms] restart {restart + 1}/{self.n_init} sweep {sweep}: "
                    f"ELBO {value:.6f}")
            if self.enabled:
                from tqdm.auto import tqdm

                tqdm.write(line, file=self.file)
            else:
                print(line, file=self.file)
        if not self.enabled:
            return
        if restart != self._restart:
            from tqdm.auto import tqdm

            self.close()
            self._restart = restart
            label = (f"restart {restart + 1}/{self.n_init}" if self.n_init > 1
                     else "CAVI sweeps")
            self._bar = tqdm(total=self.max_iter, desc=label, unit="sweep", leave=True,
                             file=self.file, dynamic_ncols=True, delay=self.delay)
        self._bar.update(sweep - self._bar.n)
        self._elbo = value
        self._bar.set_postfix_str(f"ELBO {value:.6g}", refresh=False)

    def phase(self, restart: int, name: str) -> None:
        """A costly move ``name`` starts in ``restart``: show it beside the ELBO until the next
        sweep (the bar of that restart only; nothing before its first sweep)."""
        if not self.enabled or self._bar is None or restart != self._restart:
            return
        shown = name.replace("_", " ")
        self._bar.set_postfix_str(f"ELBO {self._elbo:.6g}, {shown}", refresh=True)
