"""The caption recipe the shipped world model was last trained with, in one place.

``infusion world train model`` takes its defaults from ``SHIPPED_RECIPE`` (so a plain resume continues the shipped
model); ``train_model.ModelConfig``'s own defaults stay off (a fresh model starts plain). The model README's history
(``quality.HISTORY``) says from which step each part is on. Torch-free: the command line builds its parser from it.
"""

SHIPPED_RECIPE = {
    "name_patterns": 0.5,  # from step 13,200
    "patterned_images": 20000,  # from 13,200
    "patterned_share": 0.25,  # from 13,200
    "summary_dropout": 0.7,  # 0.5 from 13,200, 0.7 from 18,972
    "hide_look_words": 0.9,  # from 18,972
    "look_only_in_class_words": True,  # from 24,055
    "look_in_class_values": 0.5,  # from 30,448
}
"""ModelConfig field -> value."""

