"""The one label table of the project: ACDC's label values, the channel orders of each network,
and the default in-plane spacing. Every module that names a structure, orders channels or
resamples takes it from here (training, metrics, export and this runtime alike).

ACDC (Bernard et al., IEEE TMI 2018) labels each voxel 0 background, 1 right-ventricular
cavity (RV), 2 myocardium of the left ventricle (MYO), 3 left-ventricular cavity (LV); its
challenge tables list LV, RV, MYO in that order. SDNet's segmentor and anatomy-derived masks
hold the foreground only, in the original code's order [MYO, LV, RV]; the shape priors and the
U-Net baseline hold all four labels, channel k for label k. Images are resampled in-plane to
1.37 mm per pixel (Chartsias et al., MedIA 2019, Section 4.1).

Labels are held in ACDC's values everywhere inside the project; a file may be written in
another convention (``LABEL_CONVENTIONS``): M&Ms (Campello et al., STACOM 2020) labels 1 LV,
2 MYO, 3 RV, so a model trained on M&Ms data writes its predictions in those values.
"""

BACKGROUND, RV, MYO, LV = 0, 1, 2, 3
LABELS = (BACKGROUND, RV, MYO, LV)
LABEL_NAMES = {BACKGROUND: "background", RV: "RV", MYO: "MYO", LV: "LV"}
STRUCTURES = {"RV": RV, "MYO": MYO, "LV": LV}  # the foreground structures by ACDC label
CHALLENGE_ORDER = ("LV", "RV", "MYO")  # the order of ACDC's result tables
CLASSES = {name: STRUCTURES[name] for name in CHALLENGE_ORDER}  # {"LV": 3, "RV": 1, "MYO": 2}

SDNET_CHANNELS = ("MYO", "LV", "RV")  # SDNet's foreground mask channels
SDNET_CHANNEL_LABELS = tuple(STRUCTURES[name] for name in SDNET_CHANNELS)  # (2, 3, 1)
FULL_CHANNELS = tuple(LABEL_NAMES[value] for value in LABELS)  # priors and U-Net: channel k = label k

DEFAULT_SPACING_MM = 1.37  # in-plane mm per pixel after resampling (the original preprocessing)

# {convention: {ACDC label: the label written in that convention}}; background is 0 in every one
LABEL_CONVENTIONS = {"acdc": {RV: 1, MYO: 2, LV: 3}, "mnms": {LV: 1, MYO: 2, RV: 3}}
CONVENTION_NAMES = {"acdc": "ACDC's (1 RV, 2 MYO, 3 LV)", "mnms": "M&Ms' (1 LV, 2 MYO, 3 RV)"}
