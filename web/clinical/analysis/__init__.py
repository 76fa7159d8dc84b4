"""Analysis results and the analysis job lifecycle: enqueue, dispatch, run, complete, fail,
recovery sweeps, and the finding rule every other package derives from."""
