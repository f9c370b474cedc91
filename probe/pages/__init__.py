"""The pages: a dashboard, check, service and incident pages, a status page, badges."""
