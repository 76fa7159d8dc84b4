"""Offline tooling: training, evaluation, model cards, the recogniser's training and population
fitting. Nothing here runs while serving, and core's serving modules (core/*.py) never import
this package (tests/test_layering.py); it imports them freely.

    data                    folder / manifest datasets, group-leak check (no TensorFlow)
    config                  protocols, TrainConfig, the stage schedule
    datasets                subsets, carved val split, class weights, tf.data + augmentation
    model_ops               TensorFlow threads, what is trainable, BatchNorm re-estimation
    callbacks               RunState (resume) and the loop's Keras callbacks
    train                   train_model: the loop as named steps
    finalize                calibrate, threshold, evaluate, baseline, status -> registry entry
    entries                 register, re-evaluate (refinalize_model), annotate, remove
    cross_validation        grouped k-fold cross-validation of a recipe
    evaluation              metrics, intervals, threshold rule, calibration fitting (numpy)
    baseline, plots         the 8x8-thumbnail baseline; ROC / reliability / confusion plots
    model_evaluation        evaluate a registered model through the ModelManager
    model_card              models/<id>/card.md
    pointing_game           does a heat map point at the boxed finding
    population_fit          fit a population model from pooled features (numpy)
    population_pipeline     pooled features of a model's data splits, fit, write, register
    recogniser_data, recogniser, recogniser_evaluation, recogniser_card
                            the body-region recogniser: data, fit + export, evaluation, card
"""
