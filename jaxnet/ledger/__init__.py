"""BitTensor ledgers in JAX: the 2020 mechanism and Yuma Consensus (spec bittensor.md).

Public API:
  config:    BitTensorConfig, YumaConfig, LedgerConfig
  2020:      legacy_epoch_2020, inflate, connectivity_loss, run_2020, cabal_toy
  Yuma:      epoch, epoch_core, EpochOut, EpochMasks, default_masks, masks_from_blocks,
             first_permits, stored_bonds, emission_split, stake_weighted_quantile, normalize
  history:   run (float trajectories), LedgerState, init_ledger, ledger_step, run_ledger,
             split_units, EpochRecord, ledger_step_core
  audit:     LedgerCheckpointer, write_epoch_log, audit_epoch_log
  errors:    LedgerInputError, LedgerAuditError

Every entry point validates its inputs on the host (shape, and for concrete arrays finite
and >= 0) and raises a one-line `LedgerInputError` naming the argument; traced inputs get
the shape checks only, so the checked names still work under jit/vmap/scan. Unchecked, for
callers that validated already: the pure cores `epoch_core`, `legacy_epoch_2020_core`,
`ledger_step_core`, and the generic numerics `normalize` and `topk_nonzero`.
"""
from jaxnet.ledger.audit import (LedgerAuditError, LedgerCheckpointer, audit_epoch_log,
                                 epoch_log_lines, write_epoch_log)
from jaxnet.ledger.bittensor import (Epoch2020Out, cabal_toy, connectivity_loss, inflate,
                                     legacy_epoch_2020, legacy_epoch_2020_core, run_2020)
from jaxnet.ledger.config import BitTensorConfig, LedgerConfig, YumaConfig
from jaxnet.ledger.ops import normalize, stake_weighted_quantile, topk_nonzero
from jaxnet.ledger.state import (EpochRecord, LedgerState, init_ledger, ledger_step,
                                 ledger_step_core, run, run_ledger, split_units)
from jaxnet.ledger.validate import LedgerInputError
from jaxnet.ledger.yuma import (EpochMasks, EpochOut, default_masks, emission_split, epoch,
                                epoch_core, first_permits, masks_from_blocks, stored_bonds)

__all__ = [
    "BitTensorConfig", "YumaConfig", "LedgerConfig",
    "Epoch2020Out", "legacy_epoch_2020", "legacy_epoch_2020_core", "inflate",
    "connectivity_loss", "run_2020", "cabal_toy",
    "EpochOut", "EpochMasks", "epoch", "epoch_core", "default_masks", "masks_from_blocks",
    "stored_bonds", "emission_split", "stake_weighted_quantile", "normalize", "topk_nonzero",
    "run", "LedgerState", "EpochRecord", "init_ledger", "ledger_step", "ledger_step_core",
    "run_ledger",
    "split_units", "first_permits",
    "LedgerCheckpointer", "write_epoch_log", "epoch_log_lines", "audit_epoch_log",
    "LedgerInputError", "LedgerAuditError",
]
