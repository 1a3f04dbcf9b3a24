"""The federation coordinator that runs next to the MQTT broker (see the MQTT federation issue).

Never imports TensorFlow: it handles numpy arrays only.
"""
