"""Model builders (Keras functional API): U-Net, U-Net++, FCN-32s/16s/8s on VGG16.

Modules: ``blocks`` (shared layers), ``unet``, ``unetpp``, ``fcn``, ``registry`` (the model
families that ``em-keras train`` knows).
"""
