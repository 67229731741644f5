{{ metricsmith.period_metrics('month', ref('int_daily_activity'), ref('daily_metrics'), ref('int_changed_days'), ref('stg_events')) }}  -- noqa: LT05
