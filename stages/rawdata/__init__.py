"""The raw AVA / APES data: on-disk layout, annotation CSVs, archives and HTTP downloads."""
