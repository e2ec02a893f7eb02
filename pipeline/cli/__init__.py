"""The console scripts: textclf-predict, textclf-export, textclf-card (and the plots page generator)."""
