"""Building datasets: web data the datatrove way (readers, filters, extractors, the funnel), the
synthetic crawl, token packing for pretraining, and the SFT conversation mixture."""
